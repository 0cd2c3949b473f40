"""Fetching a batch's result files: downloaded, checked, fetched again while unreadable, then read in parts.

A proxy's error page or a cut body arrives as a 200 all the same, so a file is judged by its lines: one
with unreadable lines is downloaded again, backing off, up to `DOWNLOADS` times. If it stays unreadable
the run stops before merging anything of its batch, which stays open for the next run — marking it
merged would leave every request in it to be paid for again. Every file of a batch is checked before
the first part of any is handed out, so a bad file merges nothing of its batch, not even its good lines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

from batch.batchapi.endpoints import BatchApi
from batch.batchapi.results import Checked, Part, check, parts
from batch.batchapi.submit import POLICY, retrying
from batch.errors import Stopped

log = logging.getLogger("batch")

DOWNLOADS = 3  # downloads of a result file that keeps coming back unreadable, before the run stops


async def result_parts(client: BatchApi, batch: Mapping[str, Any], local: Path, rng: random.Random,
                       stopped: Callable[[], bool]) -> AsyncGenerator[Part, None]:
    """An ended batch's result files (output, error: those it has) downloaded beside `local` and
    checked, then their lines part by part, each read off the loop; the files are removed at the end
    (with `contextlib.aclosing`, at once when the merging fails)."""
    files = [(batch[key], local.with_name(f"{local.name}.{kind}"))
             for kind, key in (("output", "output_file_id"), ("error", "error_file_id"))
             if isinstance(batch.get(key), str)]
    try:
        checked = [await _download_checked(client, file_id, path, rng, stopped) for file_id, path in files]
        for (_, path), found in zip(files, checked, strict=True):
            reader = parts(path, found)  # its file closes with it (not closed here: a thread may be in it)
            while (part := await asyncio.to_thread(next, reader, None)) is not None:
                yield part
    finally:
        for _, path in files:
            path.unlink(missing_ok=True)


async def _download_checked(client: BatchApi, file_id: str, local: Path, rng: random.Random,
                            stopped: Callable[[], bool]) -> Checked:
    for attempt in range(1, DOWNLOADS + 1):
        await retrying(functools.partial(client.download_file, file_id, local), f"downloading {file_id}", rng)
        found = await asyncio.to_thread(check, local)  # 50,000 lines: off the loop
        if not found.unreadable:
            return found
        if attempt == DOWNLOADS or stopped():
            raise Stopped(f"the Batch API's result file {file_id} had {found.unreadable} unreadable lines in "
                          f"{attempt} downloads; nothing of its batch was merged. Run the same command "
                          "again later to fetch it again (nothing is submitted twice).")
        wait = POLICY.backoff(attempt, rng)
        log.warning("batch: %s had %d unreadable lines; downloading it again in %.1f s", file_id,
                    found.unreadable, wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")
