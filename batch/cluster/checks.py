"""Checks of a cluster before anything is sent: every worker can import batch, sees the state folder
(the partitions' journals are shared: a kill -9 on one worker is resumed by another), and reaches a
local input and output. Each check runs on every worker with `client.run` and a standard-library
function, so it works even on a worker where batch itself would not load.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any

from distributed import Client

from batch.dataset import partitions
from batch.dataset.partitions import Partition
from batch.errors import JobError
from batch.job.config import Job

WORKERS_TIMEOUT_S = 30.0


async def check_workers(client: Client, job: Job, todo: list[Partition]) -> int:
    """The number of workers, once every check passed; else JobError (exit 2)."""
    try:
        await _async(client).wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        raise JobError(f"the Dask cluster has no worker (waited {WORKERS_TIMEOUT_S:g}s); start workers "
                       "(dask worker SCHEDULER_ADDRESS) and run again") from None
    found = await _each(client, importlib.util.find_spec, "batch.cluster.work")
    missing = sorted(w for w, spec in found.items() if spec is None or isinstance(spec, BaseException))
    if missing:
        raise JobError(f"worker(s) {', '.join(missing)} cannot import batch's cluster runner; install it "
                       'on every worker (pip install "batch[dask]", the same version as here)')
    state = job.state.path
    state.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = state / f".shared-{token[:8]}"
    marker.write_text(token, encoding="utf-8")
    try:
        seen = await _each(client, Path.read_text, marker)
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(w for w, text in seen.items() if text != token)
    if blind:
        raise JobError(f"{job.file}: [state] path: worker(s) {', '.join(blind)} do not see {state}; the "
                       "partitions' journals must be on storage every worker shares (the same path on "
                       "every machine, e.g. a network filesystem), or every answer in flight could be "
                       "paid twice. Set [state] path to such a folder")
    local = [p.location for p in todo[:1] if not partitions.is_remote(p.location)]
    if job.output.dataset and not partitions.is_remote(job.output.dataset):
        Path(job.output.dataset).mkdir(parents=True, exist_ok=True)
        local.append(job.output.dataset)
    for path in local:
        there = await _each(client, os.path.exists, path)
        blind = sorted(w for w, ok in there.items() if ok is not True)
        if blind:
            raise JobError(f"worker(s) {', '.join(blind)} do not see {path}; a local input or output must be "
                           "on storage every worker shares, or use a URL (s3://...)")
    return len(found)


async def _each(client: Client, fn: Any, *args: Any) -> dict[str, Any]:
    """`fn(*args)` on every worker: its result, or the exception it raised."""
    result: dict[str, Any] = await _async(client).run(fn, *args, on_error="return")
    return result


def _async(client: Client) -> Any:
    """An asynchronous client, as such: distributed types its methods as if they were synchronous."""
    return client
