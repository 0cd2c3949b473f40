"""The engine's one entry point: a validated job, its rows and an endpoint in; the run's summary out.

    check (job, rows) ─► store ─► pass 1: online (`online`) or the Batch API (`batchapi.run`)
                                   pass 2: rows ─► answers ─► output (`output`) ─► report

Every door is thin: the command line, the Python API and the cluster runner each build a `Job`, the
`Rows` and an `Endpoint`, run `Run(...)` (a door through `drive`, which also reports a stopped run),
and turn its `Summary` or its exception (`errors`: JobError, Stopped, FatalApiError) into their own
terms. Everything that can make the job fail is checked before the first request. A stopped run
(signal, daily quota, fatal API error) writes no output, the previous output stays as it was, and the
store keeps every answer, so the same call resumes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batch.batchapi.run import BatchPass, refuse_open_batches
from batch.engine.memory import give_back
from batch.engine.online import OnlinePass, PacerFactory, local_pacer
from batch.engine.output import write_output
from batch.engine.preflight import check_job, check_model
from batch.engine.stops import raise_stop
from batch.errors import Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.job.schema import shape_of
from batch.render.prompts import Renderer, renderer_for
from batch.report.html.drawer import Drawer
from batch.report.html.write import report_path as report_path  # where the doors find the report
from batch.report.html.write import write_reports
from batch.report.phases import Phase, no_phase
from batch.report.progress import BatchProgress, Progress
from batch.report.summary import RunStats, Summary
from batch.report.timeline import Failures
from batch.send.servers import spoken_by
from batch.send.spendcap import CapFactory, SpendCap
from batch.store.answers import Store
from batch.store.fingerprints import RowFingerprints
from batch.store.recall import RecallWriter
from batch.tables.source import Rows

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
    notebook: bool = False  # the bar as a notebook widget
    shared_store: bool = False  # a store several processes use at once (the Python API's cache)
    pacer: PacerFactory = local_pacer  # a shared pacer: partitions of one input, a cluster's limiter
    model_checked: bool = False  # the door already asked the server's model list (once for many runs)
    spend_cap: CapFactory = SpendCap  # one cap for many runs: the parts of a dataset, a cluster's ledger
    run_token: str | None = None  # names the run across its parts and their attempts (a lost worker's)


class Run:
    """A run in progress; `interrupt()` is what a signal handler (or a notebook's stop) calls."""

    def __init__(self, job: Job, rows: Rows, endpoint: Endpoint, opts: RunOptions | None = None) -> None:
        self.job, self.rows, self.endpoint, self.opts = job, rows, endpoint, opts or RunOptions()
        self.stats = RunStats()
        self.mode = self.opts.mode or job.run.mode
        self.interrupted = False
        self.summary: Summary | None = None  # when it is over: set by `_finish`, or by `drive` if it stopped
        self._stage: OnlinePass | BatchPass | None = None
        self.spend_cap: SpendCap | None = None  # [limits] max-cost-usd: what this run may still spend
        # pass 1's fingerprints of every row, for pass 2 (the last one)
        self._fingerprints: list[RowFingerprints] = []
        # a block per phase (pass 1, pass 2, the Batch API's submit, wait, merge): a trace's child
        # spans (`drive` sets it when the run is traced)
        self.phase: Phase = no_phase

    def interrupt(self) -> None:
        self.interrupted = True
        if self._stage is not None:
            self._stage.stop()

    def so_far(self, status: str = "running", message: str | None = None) -> Summary:
        """What the run has done so far, from its counters (answers received this run as rows ok):
        for the metrics file while it runs, and the report of a run that stopped."""
        s = self.stats
        return Summary.build(s, status=status, model=self.job.task.model, rows=0, rows_ok=s.answered,
                             rows_failed=s.failed, rows_from_store=0, output=None, message=message,
                             mode=self.mode, max_cost_usd=self.job.limits.max_cost_usd)

    async def execute(self) -> Summary:
        job, endpoint, opts = self.job, self.endpoint, self.opts
        check_job(job, self.rows)
        # The built-in simulator serves every model batch knows; a door may have asked already. Online,
        # the model list is asked just before the first chat request: a re-run with every answer in the
        # store then asks the server nothing.
        check = None
        if not endpoint.simulated and not self.opts.model_checked:
            check = functools.partial(check_model, job, endpoint.base_url, endpoint.key)
            if self.mode == "batch":
                await check()
                check = None
        store = Store(job.state.path, shared=opts.shared_store)
        try:
            store.begin_run(opts.run_token)
            if job.task.top_k is not None:
                log.warning("top-k = %s is accepted for compatibility but not sent: Groq has no top_k "
                            "parameter and rejects requests that carry it", job.task.top_k)
            renderer = renderer_for(job, endpoint.base_url, server=await spoken_by(job, endpoint))
            if job.limits.max_cost_usd is not None:
                self.spend_cap = opts.spend_cap(job.limits.max_cost_usd, job.task.model,
                                             renderer.completion_budget)
            expired = 0
            if self.mode == "batch":
                log.info("run: %d rows from %s -> %s; model %s at %s; Batch API, completion window %s",
                         self.rows.num_rows, self.rows.name, job.output.path, job.task.model,
                         endpoint.base_url, job.run.completion_window)
                with self.phase("batch.pass1.batch_api"):
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
                with self.phase("batch.pass1.online"):
                    await self._online(renderer, store, check)
            with self.phase("batch.pass2.output"):
                return await self._finish_off_loop(renderer, store)
        finally:
            for keys in self._fingerprints:
                keys.close()
            store.close()

    async def _via_batch_api(self, renderer: Renderer, store: Store) -> int:
        opts = self.opts
        stage = BatchPass(self.job, self.rows, renderer, store, self.stats, limit=opts.limit,
                          retry_failed=opts.retry_failed, wait=opts.wait, spend_cap=self.spend_cap,
                          phase=self.phase)
        self._stage = stage
        if self.interrupted:
            stage.stop()
        progress = BatchProgress(tty=opts.tty, enabled=opts.progress)
        try:
            return await stage.run(self.endpoint, progress)
        except OSError as exc:  # a request or result file beside the state: disk full, read-only
            raise Stopped(f"could not write beside the state {self.job.state.path}: {exc}. Every answer "
                          "and every submitted batch is recorded; free space, then run the same command "
                          "(nothing is submitted twice).") from exc
        finally:
            self._fingerprints += [stage.fingerprints] if stage.fingerprints else []
            progress.close()

    async def _online(self, renderer: Renderer, store: Store,
                      check: Callable[[], Awaitable[None]] | None) -> None:
        job, opts = self.job, self.opts
        total = self.rows.num_rows if opts.limit is None else min(opts.limit, self.rows.num_rows)
        stage = OnlinePass(self.rows, renderer, store, self.stats, limits=job.limits, limit=opts.limit,
                           retry_failed=opts.retry_failed, pacer=opts.pacer,
                           shape=shape_of(job.task.response_format), spend_cap=self.spend_cap,
                           before_first=check)
        self._stage = stage
        if self.interrupted:
            stage.stop()
        progress = Progress(total, self.stats, tty=opts.tty, enabled=opts.progress, notebook=opts.notebook)
        try:
            pool = await stage.run(self.endpoint, progress)
        finally:
            self._fingerprints += [stage.fingerprints] if stage.fingerprints else []
            progress.close()
        raise_stop(pool, self.spend_cap, "interrupted; answers so far are saved. Run the same command "
                   "again to resume (it sends only the rows that have no answer yet).")

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
        self.stats.failures = Failures()  # from here on, the report's failed rows are the output's
        give_back()  # what pass 1 freed (its threads' allocator arenas too), before pass 2 allocates
        keys = self._fingerprints[-1] if self._fingerprints else None
        # Each row's answer for the next run (`recall`), unless this run's rows were the last one's.
        recall = None if keys is not None and keys.unchanged else RecallWriter(store)
        # The report's drawing process loads matplotlib while the output is written (`drawer`).
        drawer = Drawer.start()
        try:
            return self._written(renderer, store, halt, keys, recall, drawer)
        finally:
            drawer.close()  # (unless its page was drawn) a failed pass 2 leaves no process behind

    def _written(self, renderer: Renderer, store: Store, halt: threading.Event | None,
                 keys: RowFingerprints | None, recall: RecallWriter | None, drawer: Drawer) -> Summary:
        job = self.job
        try:
            written = write_output(self.rows, renderer, store, path=job.output.path, fmt=job.output.format,
                                   text_column=job.output.text_column,
                                   response_format=job.task.response_format, limit=self.opts.limit,
                                   failures=self.stats.failures, keys=keys, halt=halt, recall=recall)
            if recall is not None:
                recall.commit()
        except OSError as exc:  # disk full, folder removed mid-run, ...: every answer is in the store
            raise Stopped(f"could not write the output {job.output.path}: {exc}. Every answer is saved "
                          "and the previous output is as it was; free space (or make the folder writable), "
                          "then run the same command (it sends nothing more).") from exc
        finally:
            if recall is not None:
                recall.discard()  # what is left of it, if it was not committed
        failed = written.failed
        message = None if failed == 0 else (f"{failed} rows failed; see the error column. Rows that failed "
                                            "transiently are retried by the next run (--retry-failed: all).")
        summary = Summary.build(self.stats, status="complete" if failed == 0 else "failed-rows",
                                model=job.task.model, rows=written.rows, rows_ok=written.ok,
                                rows_failed=failed, rows_from_store=written.from_store,
                                rows_from_store_failed=written.from_store_failed,
                                output=job.output.path, message=message, mode=self.mode,
                                max_cost_usd=job.limits.max_cost_usd)
        store.finish_run(summary.to_json())
        try:
            write_reports(job, summary, self.stats, store, drawer)  # the JSON, then the HTML beside it
        except OSError as exc:  # the output is in place; only the report beside it is missing
            raise Stopped(f"could not write the report {report_path(job)}: {exc}. The output is written "
                          "and every answer is saved; free space, then run the same command.") from exc
        self.summary = summary
        return summary

