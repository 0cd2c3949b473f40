"""The Python door's Dask DataFrames: `batch.run(ddf, ...)` returns a Dask DataFrame; `batch.plan(ddf)`.

A run goes to the cluster (`batch.cluster.frames`): the frame is staged as a folder of Parquet parts,
one per Dask partition, which runs as any partitioned input does on Dask (one task per part, one limit
and one spend cap for the whole cluster), and the result is read lazily from the output parts. Its
folders (staged input, output parts, journals) are kept in the per-user cache, one folder per task,
server and data (Dask's token of the frame), so the same call again sends nothing and writes nothing;
or under `state=` when given, so that a frame that grows or changes re-runs only its changed parts.
Dask is imported by `batch.cluster` only, and only when the data is a Dask DataFrame. Staging and
starting a LocalCluster are Dask's blocking calls: `arun` holds its event loop meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batch.doors.simulated import endpoint_for
from batch.engine.drive import drive
from batch.engine.run import RunOptions
from batch.errors import Stopped
from batch.job import endpoint as endpoints
from batch.job.config import Job
from batch.job.keywords import build_job
from batch.report.metrics import MetricsFile


def is_dask(data: Any) -> bool:
    """A Dask DataFrame, without importing Dask: whoever has one has imported it."""
    dd = sys.modules.get("dask.dataframe")
    return dd is not None and isinstance(data, dd.DataFrame)


def computed(data: Any) -> Any:
    """The frame as pandas, computed by the scheduler in use (for `plan`, which sends nothing)."""
    return data.compute()


async def arun(data: Any, job_file: str | Path | None, options: dict[str, Any], door: Mapping[str, Any],
               opts: RunOptions, metrics: MetricsFile | None, cache_path: Callable[[Job, str], Path]
               ) -> Any:
    """`batch.run` of a Dask DataFrame: a Dask DataFrame back, the run's summary in `out.attrs`."""
    from batch.cluster import frames  # Dask, only for a Dask DataFrame
    from batch.cluster.runner import ClusterRun

    simulate = bool(door.get("simulate"))
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp:  # validation first, nothing written yet
        first = build_job(job_file, options, data_path=Path(tmp) / "input.parquet", data_format="parquet",
                          output=Path(tmp) / "output.parquet", state=Path(tmp) / "state.sqlite",
                          caller="batch.run()")
    token = frames.data_token(data)
    staged, output, state = _folders(first, door, token, cache_path, simulate)
    run_options = {k: v for k, v in options.items() if k != "cluster"}
    with frames.cluster(first.run.cluster) as (client, address):
        frames.stage(data, client, staged, token)
        job = build_job(job_file, run_options, data_path=staged, data_format=None, output=output,
                        state=state, caller="batch.run()")
        async with endpoint_for(job, None, os.environ, simulate=simulate) as ep:
            try:
                summary = await drive(ClusterRun(job, ep, opts, address), metrics=metrics)
            except Stopped as exc:
                exc.partial = frames.result(output, data, {"status": "stopped"})
                raise
    figures = json.loads(summary.to_json())
    figures["output"] = str(output) if door.get("output") else None
    return frames.result(output, data, figures)


def _folders(job: Job, door: Mapping[str, Any], token: str, cache_path: Callable[[Job, str], Path],
             simulate: bool) -> tuple[Path, Path, Path]:
    """Where the staged input, the output parts and the journals go."""
    if door.get("state"):
        root = Path(door["state"]).expanduser().resolve()
        if simulate:  # the simulator's answers never served to a run against a model
            root = root.with_name(root.name + ".simulated")
    else:
        server = "simulated" if simulate else endpoints.resolve_base_url(None, job, os.environ)
        task = cache_path(job, server)
        digest = hashlib.sha256(f"{task.name}\n{token}".encode()).hexdigest()[:16]
        root = task.with_name(f"{task.stem}-dask-{digest}")
    output = Path(door["output"]).expanduser().resolve() if door.get("output") else root / "output"
    return root / "input", output, root / "state"


__all__ = ["arun", "computed", "is_dask"]
