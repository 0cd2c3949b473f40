"""The Python door: `run`, `arun` and `plan` over a DataFrame, an Arrow table or stream, or a file.

    batch.run(df, model=..., prompt="Summarize: ${body}")     -> df with the answer columns
    batch.run(df, "jobs/tickets.toml", temperature=0)          -> a job file, options over it

The same engine, validation, store and exit conditions as the command line. Without `state=`, answers
are kept in a per-user cache (`$XDG_CACHE_HOME/batch/`, else `~/.cache/batch/`), one store per task
(model, messages, parameters), shared by every process: calling again pays nothing twice, and calls
at once (one loop, threads, processes) pay each request once: one sends it, the others wait for its
answer (`store.claims`). Row failures are values (the `error` column); `FatalApiError` (bad key,
model gone), `Stopped` (interrupted, daily quota; `.partial` holds the rows so far) and `JobError`
(invalid options or data; nothing sent) are exceptions. KeyboardInterrupt keeps every answer received.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from batch.doors import dask_door, watching
from batch.doors.simulated import endpoint_for, kept_apart
from batch.engine.drive import drive
from batch.engine.output import write_so_far
from batch.engine.plan import Plan, make_plan
from batch.engine.preflight import check_job
from batch.engine.run import Run, RunOptions
from batch.errors import JobError, Stopped
from batch.job import endpoint as endpoints
from batch.job.config import Job, with_state
from batch.job.keywords import build_job
from batch.tables import frames
from batch.tables.source import Rows

log = logging.getLogger("batch")

# Options of the door itself, beside the job file's keys.
_DOOR = ("state", "output", "simulate", "retry_failed", "wait", "progress")


def run(data: Any, job: str | Path | None = None, /, **options: Any) -> Any:
    """Ask the model about every row of `data`; the rows back, in order, with the answer columns.

    `data`: a pandas DataFrame (pandas back, its index kept), a pyarrow Table or any object with
    `__arrow_c_stream__` such as a polars DataFrame or a DuckDB result (a pyarrow Table back), a Dask
    DataFrame (run on the Dask client in use, else a LocalCluster; a Dask DataFrame back; `cluster=`
    names a scheduler), or the path of a .csv/.parquet/.jsonl file (pandas back). `job`: an optional
    job file. `options`: the job file's keys in snake_case (model, prompt, system_message,
    max_new_tokens, temperature, top_p, seed, user, chat_history, prompt_images, image_dir, stop,
    response_format, reasoning_effort, ..., requests_per_minute, tokens_per_minute, concurrency,
    max_attempts, request_timeout, text_column, mode, completion_window, on_expired, poll_interval,
    base_url, metrics_file (labelled job="python" without a job file), log_format), plus `state=` (the
    store's path), `output=` (also write the output file and its report there), `simulate=True` (the
    built-in Groq simulator: no key, no network), `retry_failed=True`, `wait=False` (batch mode: submit,
    then raise Stopped), `progress=False`. The run's summary is `out.attrs["batch"]` (pandas, Dask) or
    the schema metadata key `batch` (JSON, Arrow).

    Works inside a running event loop (Jupyter): the run then goes on in a thread of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(data, job, **options))
    return _in_a_thread(arun(data, job, **options))


def _in_a_thread(work: Coroutine[Any, Any, Any]) -> Any:
    """A notebook's loop is running in this thread: run ours in another and wait for it here. A stop
    (KeyboardInterrupt) here cancels the run there, which keeps every answer received, then re-raises."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(work)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch") as pool:
        done = pool.submit(loop.run_until_complete, task)
        try:
            return done.result()
        except KeyboardInterrupt:
            loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(BaseException):
                done.result()
            raise
        finally:
            if done.done():
                loop.close()


async def arun(data: Any, job: str | Path | None = None, /, **options: Any) -> Any:
    """`run`, for code already in an event loop."""
    door = {k: options.pop(k) for k in _DOOR if k in options}
    metrics = watching.metrics_file(job, options)  # before validation: a refused call is recorded too
    name = watching.job_name(job)
    if dask_door.is_dask(data):  # on the Dask cluster, a Dask DataFrame back
        with watching.refused(metrics, name):
            opts = RunOptions(retry_failed=bool(door.get("retry_failed")),
                              progress=door.get("progress", True) is not False)
            return await dask_door.arun(data, job, options, door, opts, metrics, _cache_path)
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp, watching.refused(metrics, name):
        prepared = prepare(data, job, options, door, Path(tmp), caller="batch.run()")
        opts = RunOptions(retry_failed=bool(door.get("retry_failed")),
                          wait=door.get("wait", True) is not False,
                          progress=door.get("progress", True) is not False, tty=_interactive(),
                          notebook=_in_notebook(), shared_store=_cached(prepared.job))
        watching.show_log_lines(prepared.job.run.log_format, name)
        simulate = bool(door.get("simulate"))
        try:
            async with endpoint_for(prepared.job, None, os.environ, simulate=simulate) as ep:
                summary = await drive(Run(prepared.job, prepared.rows, ep, opts), metrics=metrics)
        except Stopped as exc:
            exc.partial = _partial(prepared, data)
            raise
        figures = json.loads(summary.to_json())
        figures["output"] = str(prepared.job.output.path) if door.get("output") else None
        return frames.result(prepared.kind, data, prepared.job.output.path, figures, prepared.rows)


def plan(data: Any, job: str | Path | None = None, /, **options: Any) -> Plan:
    """What `run` would send, cost and take (tokens, dollars, minutes); sends nothing, needs no key."""
    door = {k: options.pop(k) for k in _DOOR if k in options}
    if dask_door.is_dask(data):  # planned from its rows, computed here (nothing is sent)
        data = dask_door.computed(data)
        door.pop("state", None)  # a Dask run's state= is a folder of journals, not one store
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp:
        prepared = prepare(data, job, options, door, Path(tmp), caller="batch.plan()")
        return make_plan(prepared.job, None, None, data=prepared.rows)


class _Prepared:
    def __init__(self, job: Job, rows: Rows, kind: str, tmp: Path) -> None:
        self.job, self.rows, self.kind, self.tmp = job, rows, kind, tmp


def prepare(data: Any, job_file: str | Path | None, options: Mapping[str, Any], door: Mapping[str, Any],
             tmp: Path, *, caller: str) -> _Prepared:
    rows, kind = frames.rows_of(data, tmp / "input.arrow")
    if rows is None:  # a path: read as the job file's [input] path would be (format= or the extension)
        path, fmt = Path(data).expanduser().resolve(), options.get("format")
    else:
        path, fmt = tmp / "input.arrow", "parquet"
    options = {k: v for k, v in options.items() if k != "format"}
    output = Path(door["output"]).resolve() if door.get("output") else tmp / "output.parquet"
    state = Path(door["state"]).expanduser().resolve() if door.get("state") else tmp / "unset.sqlite"
    job = build_job(job_file, options, data_path=path, data_format=fmt, output=output, state=state,
                    caller=caller)
    if job.run.cluster:
        raise JobError(f"{caller}: cluster=: a cluster runs a partitioned input from the command line "
                       "(python -m batch run JOB.toml --cluster ...); from Python, leave cluster out")
    if not door.get("state"):
        server = "simulated" if door.get("simulate") else endpoints.resolve_base_url(None, job, os.environ)
        job = with_state(job, _cache_path(job, server))
    elif door.get("simulate"):
        job = kept_apart(job)
    return _Prepared(job, check_job(job, rows), kind, tmp)


def _partial(p: _Prepared, data: Any) -> Any:
    """The rows so far, in the caller's kind: answered ones with their answers, the rest with an error
    saying they have no answer yet. None if even that cannot be written."""
    partial = p.tmp / "partial.parquet"  # never over the caller's output=: a stopped run writes none
    if not write_so_far(p.job, p.rows, partial):
        return None
    return frames.result(p.kind, data, partial, {"status": "stopped"}, p.rows)


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where answers live without `state=`: `$XDG_CACHE_HOME/batch`, else `~/.cache/batch`."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batch"


def _cache_path(job: Job, server: str) -> Path:
    # One store per task and server: the same call finds its answers, unrelated calls never contend for
    # one file, and a simulated answer is never served to a call against a real model.
    task = {k: v for k, v in vars(job.task).items() if k != "image_dir"} | {"server": server}
    digest = hashlib.sha256(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"{job.task.model.replace('/', '_')}-{digest}.sqlite"


def _cached(job: Job) -> bool:
    return job.state.path.parent == cache_dir()


def _interactive() -> bool:
    return sys.stderr.isatty() or _in_notebook()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


__all__ = ["arun", "cache_dir", "plan", "run"]
