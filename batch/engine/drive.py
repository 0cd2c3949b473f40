"""A run as every door drives it: to its end, or stopped by a signal, and reported either way.

    door ─► drive(runner) ─► runner.execute() ─► Summary
                 │  SIGINT/SIGTERM (signals=True): the first interrupts, a second cancels (Stopped)
                 └─ Stopped / FatalApiError ─► the stopped run's report; `runner.summary` says what it did

A `Runner` is one file (`run.Run`), a partitioned input (`batch.dataset`) or a cluster run
(`batch.cluster`); each tells what it has done so far (`so_far`: a partitioned run adds up its parts,
finished and under way; a cluster run, its finished parts and what its workers last said of theirs).
A partitioned or cluster run writes its own report when it stops; for one file, the report of a run
stopped after sending something is written here, beside the output (JSON and HTML), so that an
interrupted or over-quota run still tells what it did and spent.

With a `MetricsFile`, drive also keeps the run's Prometheus textfile: every `METRICS_EVERY_S` from
the run's own counters (read, never added to), and once more at the end with the exit code the door
gives, whatever the end: done, failed rows, refused, stopped, fatal, or a crash. When the OTEL_*
variables ask for it (`report.otel`), the run is also a trace (its phases child spans) and the same
metrics over OTLP, exported once at the end, bounded in time, never changing how the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Protocol

from batch.engine.run import Run
from batch.errors import EXIT_OK, EXIT_ROWS_FAILED, BatchError, FatalApiError, Stopped
from batch.report.html.write import report_path, write_reports
from batch.report.metrics import PYTHON_JOB, MetricsFile
from batch.report.otel import Telemetry
from batch.report.summary import Summary

log = logging.getLogger("batch")


class Runner(Protocol):
    """What a door runs: one file (`Run`), a partitioned input, or a cluster run."""

    summary: Summary | None  # set once the run is over, stopped or not (None: it did nothing to tell)

    def interrupt(self) -> None: ...

    def so_far(self) -> Summary | None:
        """The run's counts so far, read (never added to) while it runs; None: nothing yet."""
        ...

    async def execute(self) -> Summary: ...


METRICS_EVERY_S = 15.0


async def drive(run: Runner, *, signals: bool = False, metrics: MetricsFile | None = None) -> Summary:
    """`run.execute()`; when it stops (Stopped, FatalApiError), `run.summary` is what it did before.

    `signals` (for a process of its own, the command line): the first SIGINT or SIGTERM lets the
    requests in flight finish, then stops the run; a second stops it at once, as `Stopped`.
    `metrics`: the textfile to keep during the run and to finish at its end."""
    started = time.monotonic()
    # The Batch API may take hours: no exporter's process idles meanwhile (it starts at the end). A
    # partitioned or cluster run is online.
    telemetry = Telemetry.start(metrics.job if metrics is not None else _job_name(run),
                                early=not (isinstance(run, Run) and run.mode == "batch"))
    if telemetry is not None and isinstance(run, Run):
        run.phase = telemetry.phase
    watch = asyncio.create_task(_keep(metrics, run, started)) if metrics is not None else None
    code = 1  # an unexpected exception ends the process with 1, as Python does
    try:
        summary = await (_until_signalled(run) if signals else run.execute())
        code = EXIT_OK if summary.rows_failed == 0 else EXIT_ROWS_FAILED
        return summary
    except BatchError as exc:
        code = exc.exit_code
        exc.recorded = True  # below, in the metrics file and the trace
        if isinstance(run, Run):
            run.summary = report_stop(run, exc)
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):  # a Python caller's stop: resumable
        code = Stopped.exit_code
        raise
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if metrics is not None:
            metrics.finish(code, run.summary or run.so_far(), time.monotonic() - started)
        if telemetry is not None:
            model, mode = (run.job.task.model, run.mode) if isinstance(run, Run) else (None, None)
            telemetry.finish(code, run.summary or run.so_far(), time.monotonic() - started,
                             model=model, mode=mode)


def _job_name(run: Runner) -> str:
    """The `job` label without a metrics file, as the textfile's: the job file's stem, or "python" for
    a Python call without one (its `file` is then the call's name, for messages, not a .toml)."""
    file = getattr(getattr(run, "job", None), "file", None)
    return file.stem if file is not None and file.suffix == ".toml" else PYTHON_JOB


async def _keep(metrics: MetricsFile, run: Runner, started: float) -> None:
    """The textfile now (the last run's ending still in it), then every METRICS_EVERY_S."""
    while True:
        metrics.update(run.so_far(), time.monotonic() - started)
        await asyncio.sleep(METRICS_EVERY_S)


async def _until_signalled(run: Runner) -> Summary:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.warning("%s: finishing the requests in flight, then stopping (again to stop now)", signame)
            run.interrupt()
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        return await run.execute()
    except asyncio.CancelledError:
        raise Stopped("stopped at once on a second signal; committed answers are saved. Run the same "
                      "command again to resume.") from None


def report_stop(run: Run, exc: BaseException) -> Summary | None:
    """A run that ended early (Stopped, FatalApiError) after sending something still tells what it
    did: its summary, written beside the output as JSON and HTML (a warning if it cannot be)."""
    stats = run.stats
    if not isinstance(exc, Stopped | FatalApiError) or not (stats.requests or stats.batches
                                                            or stats.batch_results):
        return None
    summary = run.so_far("stopped" if isinstance(exc, Stopped) else "fatal", str(exc))
    try:
        write_reports(run.job, summary, stats)  # the JSON, then the HTML beside it
    except OSError as err:
        log.warning("could not write %s: %s", report_path(run.job), err)
    return summary
