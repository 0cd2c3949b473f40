"""A run as every door drives it: to its end, or stopped by a signal, and reported either way.

    door ─► drive(runner) ─► runner.execute() ─► Summary
                 │  SIGINT/SIGTERM (signals=True): the first interrupts, a second cancels (Stopped)
                 └─ Stopped / FatalApiError ─► the stopped run's report; `runner.summary` says what it did

A `Runner` is one file (`run.Run`), a partitioned input (`batch.dataset`) or a cluster run
(`batch.cluster`). A partitioned or cluster run writes its own report when it stops; for one file,
the report of a run stopped after sending something is written here, beside the output (JSON and
HTML), so that an interrupted or over-quota run still tells what it did and spent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from batch.engine.run import Run
from batch.errors import BatchError, FatalApiError, Stopped
from batch.report.html.write import report_path, write_reports
from batch.report.summary import Summary

log = logging.getLogger("batch")


class Runner(Protocol):
    """What a door runs: one file (`Run`), a partitioned input, or a cluster run."""

    summary: Summary | None  # set once the run is over, stopped or not (None: it did nothing to tell)

    def interrupt(self) -> None: ...

    async def execute(self) -> Summary: ...


async def drive(run: Runner, *, signals: bool = False) -> Summary:
    """`run.execute()`; when it stops (Stopped, FatalApiError), `run.summary` is what it did before.

    `signals` (for a process of its own, the command line): the first SIGINT or SIGTERM lets the
    requests in flight finish, then stops the run; a second stops it at once, as `Stopped`."""
    try:
        return await (_until_signalled(run) if signals else run.execute())
    except BatchError as exc:
        if isinstance(run, Run):
            run.summary = report_stop(run, exc)
        raise


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
    summary = Summary.build(stats, status="stopped" if isinstance(exc, Stopped) else "fatal",
                            model=run.job.task.model, rows=0, rows_ok=stats.answered,
                            rows_failed=stats.failed, rows_from_store=0, output=None, message=str(exc),
                            mode=run.mode, max_cost_usd=run.job.limits.max_cost_usd)
    try:
        write_reports(run.job, summary, stats)  # the JSON, then the HTML beside it
    except OSError as err:
        log.warning("could not write %s: %s", report_path(run.job), err)
    return summary
