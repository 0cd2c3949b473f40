"""The engine's one entry point: a validated job, its rows and an endpoint in; the run's summary out.

    check (job, rows) ─► store ─► pass 1: online (`online`) or the Batch API (`batchapi.run`)
                                   pass 2: rows ─► answers ─► output (`output`) ─► report

Every door is thin: the command line, the Python API and the cluster runner each build a `Job`, the
`Rows` and an `Endpoint`, call `Run(...).execute()`, and turn its `Summary` or its exception
(`errors`: JobError, Stopped, FatalApiError) into their own terms. Everything that can make the job
fail is checked before the first request. A stopped run (signal, daily quota, fatal API error)
writes no output, the previous output stays as it was, and the store keeps every answer, so the
same call resumes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .batchapi.run import BatchPass, refuse_open_batches
from .config import Job
from .endpoint import Endpoint
from .errors import Stopped
from .online import OnlinePass
from .output import write_output
from .preflight import check_job, check_model
from .progress import BatchProgress, Progress
from .prompts import Renderer
from .report import RunStats, Summary
from .rowkeys import RowKeys
from .source import Rows
from .store import Store

log = logging.getLogger("batch")


@dataclass(frozen=True)
class RunOptions:
    """How to run, beyond what the job says; every door offers these."""

    limit: int | None = None  # only the first N rows
    retry_failed: bool = False  # also re-send rows whose earlier failure was permanent
    mode: str | None = None  # "online" or "batch": overrides [run] mode
    wait: bool = True  # batch mode: False submits (or collects what is done), then stops
    progress: bool = True
    tty: bool = False  # a progress bar rather than log lines


class Run:
    """A run in progress; `interrupt()` is what a signal handler (or a notebook's stop) calls."""

    def __init__(self, job: Job, rows: Rows, endpoint: Endpoint, opts: RunOptions | None = None) -> None:
        self.job, self.rows, self.endpoint, self.opts = job, rows, endpoint, opts or RunOptions()
        self.stats = RunStats()
        self.mode = self.opts.mode or job.run.mode
        self.interrupted = False
        self._stage: OnlinePass | BatchPass | None = None
        self._keys: list[RowKeys] = []  # pass 1's fingerprints of every row, for pass 2 (the last one)

    def interrupt(self) -> None:
        self.interrupted = True
        if self._stage is not None:
            self._stage.stop()

    async def execute(self) -> Summary:
        job, endpoint = self.job, self.endpoint
        check_job(job, self.rows)
        if not endpoint.simulated:  # the built-in simulator serves every model batch knows
            await check_model(job, endpoint.base_url, endpoint.key)
        store = Store(job.state.path)
        try:
            store.begin_run()
            if job.task.top_k is not None:
                log.warning("top-k = %s is accepted for compatibility but not sent: Groq has no top_k "
                            "parameter and rejects requests that carry it", job.task.top_k)
            renderer = Renderer(job.task, key=job.input.key)
            expired = 0
            if self.mode == "batch":
                log.info("run: %d rows from %s -> %s; model %s at %s; Batch API, completion window %s",
                         self.rows.num_rows, self.rows.name, job.output.path, job.task.model,
                         endpoint.base_url, job.run.completion_window)
                expired = await self._via_batch_api(renderer, store)
                if expired:
                    log.info("batch: sending the %d requests the Batch API did not answer in time "
                             "online ([run] on-expired = \"online\")", expired)
            else:
                refuse_open_batches(job, store)
                log.info("run: %d rows from %s -> %s; model %s at %s; %.0f req/min, %.0f tokens/min, "
                         "concurrency %d", self.rows.num_rows, self.rows.name, job.output.path,
                         job.task.model, endpoint.base_url, endpoint.rpm, endpoint.tpm,
                         job.limits.concurrency)
            if self.mode == "online" or expired:
                await self._online(renderer, store)
            return await self._finish_off_loop(renderer, store)
        finally:
            for keys in self._keys:
                keys.close()
            store.close()

    async def _via_batch_api(self, renderer: Renderer, store: Store) -> int:
        opts = self.opts
        stage = BatchPass(self.job, self.rows, renderer, store, self.stats, limit=opts.limit,
                          retry_failed=opts.retry_failed, wait=opts.wait)
        self._stage = stage
        if self.interrupted:
            stage.stop()
        progress = BatchProgress(tty=opts.tty, enabled=opts.progress)
        try:
            return await stage.run(self.endpoint, progress)
        finally:
            self._keys += [stage.keys] if stage.keys else []
            progress.close()

    async def _online(self, renderer: Renderer, store: Store) -> None:
        job, opts = self.job, self.opts
        total = self.rows.num_rows if opts.limit is None else min(opts.limit, self.rows.num_rows)
        stage = OnlinePass(self.rows, renderer, store, self.stats, limits=job.limits, limit=opts.limit,
                           retry_failed=opts.retry_failed)
        self._stage = stage
        if self.interrupted:
            stage.stop()
        progress = Progress(total, self.stats, tty=opts.tty, enabled=opts.progress)
        try:
            pool = await stage.run(self.endpoint, progress)
        finally:
            self._keys += [stage.keys] if stage.keys else []
            progress.close()
        if pool.fatal is not None:
            raise pool.fatal
        if pool.quota is not None:
            raise Stopped(quota_message(pool.quota.limit, pool.quota.reset_s))
        if pool.stop_reason:
            raise Stopped("interrupted; answers so far are saved. Run the same command again to resume "
                          "(it sends only the rows that have no answer yet).")

    async def _finish_off_loop(self, renderer: Renderer, store: Store) -> Summary:
        """Pass 2 in a worker thread, so that a signal is still heard at once. Cancelled (a second
        signal), it tells the thread to stop after its chunk and waits for that, so the store is not
        closed under it; the output is then left as it was."""
        halt = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._finish, renderer, store, halt))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            halt.set()
            await asyncio.wait([work])
            raise

    def _finish(self, renderer: Renderer, store: Store, halt: threading.Event | None = None) -> Summary:
        job = self.job
        try:
            written = write_output(self.rows, renderer, store, path=job.output.path, fmt=job.output.format,
                                   text_column=job.output.text_column,
                                   response_format=job.task.response_format, limit=self.opts.limit,
                                   keys=self._keys[-1] if self._keys else None, halt=halt)
        except OSError as exc:  # disk full, folder removed mid-run, ...: every answer is in the store
            raise Stopped(f"could not write the output {job.output.path}: {exc}. Every answer is saved; "
                          "fix this and run the same command again (it sends nothing more).") from exc
        failed = written.failed
        message = None if failed == 0 else (f"{failed} rows failed; see the error column. Rows that failed "
                                            "transiently are retried by the next run (--retry-failed: all).")
        summary = Summary.build(self.stats, status="complete" if failed == 0 else "failed-rows",
                                model=job.task.model, rows=written.rows, rows_ok=written.ok,
                                rows_failed=failed, rows_from_store=written.from_store,
                                output=job.output.path, message=message, mode=self.mode)
        summary.write_json(report_path(job))
        store.finish_run(summary.to_json())
        return summary


def report_path(job: Job) -> Path:
    return job.output.path.with_name(job.output.path.name + ".report.json")


def quota_message(limit: str | None, retry_after: float | None) -> str:
    what = {"rpd": "requests per day", "tpd": "tokens per day"}.get(limit or "", "daily")
    when = ""
    if retry_after:
        at = datetime.now(UTC) + timedelta(seconds=retry_after)
        when = f"; it resets in about {timedelta(seconds=round(retry_after))} (at {at:%Y-%m-%d %H:%M} UTC)"
    return (f"Groq's {what} quota for this model is used up{when}. Answers so far are saved; run the same "
            "command again after the reset to continue.")
