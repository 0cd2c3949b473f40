"""Fetching a batch's result file: downloaded, parsed, and fetched again while it comes back unreadable.

A proxy's error page or a cut body arrives as a 200 all the same, so a file is judged by its lines: one
with unreadable lines is downloaded again, backing off, up to `DOWNLOADS` times. If it stays unreadable
the run stops before merging anything of its batch, which stays open for the next run — marking it
merged would leave every request in it to be paid for again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from pathlib import Path

from ..errors import Stopped
from .endpoints import BatchApi
from .files import Results, read_results
from .submit import POLICY, retrying

log = logging.getLogger("batch")

DOWNLOADS = 3  # downloads of a result file that keeps coming back unreadable, before the run stops


async def download_results(client: BatchApi, file_id: str, local: Path, rng: random.Random,
                           stopped: Callable[[], bool]) -> Results:
    """The parsed result file `file_id`, fetched through `local` (removed afterwards)."""
    try:
        for attempt in range(1, DOWNLOADS + 1):
            await retrying(functools.partial(client.download_file, file_id, local), f"downloading {file_id}",
                           rng)
            results = await asyncio.to_thread(read_results, local)  # 50,000 lines: off the loop
            if not results.unreadable:
                return results
            if attempt == DOWNLOADS or stopped():
                raise Stopped(f"the Batch API's result file {file_id} had {results.unreadable} unreadable "
                              f"lines in {attempt} downloads; nothing of its batch was merged. Run the same "
                              "command again later to fetch it again (nothing is submitted twice).")
            wait = POLICY.backoff(attempt, rng)
            log.warning("batch: %s had %d unreadable lines; downloading it again in %.1f s", file_id,
                        results.unreadable, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")
    finally:
        local.unlink(missing_ok=True)
