"""One run of a job: the only module that knows every stage, and wires them in one direction.

    preflight (model, input, key) ─► store ─► pass 1: source ─► prompts ─► store.missing ─► pool
                                                  pass 2: source ─► prompts ─► store.get ─► sink ─► report

Everything that can make the job fail is checked before the first request. Pass 1 sends only what the
store has no answer for; pass 2 reads the input again and writes every row with its answer, in order.
A stopped run (signal, daily quota, fatal API error) writes no output — the previous output file, if
any, stays as it was — and the store keeps every answer, so the same command resumes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import structured
from .batchmode import BatchMode, remove_folder_if_empty, upload_folder
from .client import Client
from .config import Job
from .errors import FatalApiError, JobError, Stopped
from .limits import Pacer
from .pool import Pool
from .preflight import check_job, check_model, endpoint
from .progress import BatchProgress, Progress
from .prompts import Renderer, RowFailure
from .records import Answer, Request
from .report import RunStats, Summary
from .retry import RetryPolicy
from .sink import Outcome, OutputWriter
from .source import Source
from .store import Store

log = logging.getLogger("batch")

@dataclass
class RunOptions:
    limit: int | None = None
    base_url: str | None = None  # --base-url
    simulate: bool = False
    retry_failed: bool = False
    mode: str | None = None  # --mode: overrides [run] mode
    wait: bool = True  # --no-wait: submit (or check) batches, then stop instead of waiting
    progress: bool = True
    tty: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class Run:
    """A run in progress; `interrupt()` is what a signal handler calls."""

    def __init__(self, job: Job, opts: RunOptions) -> None:
        self.job, self.opts = job, opts
        self.stats = RunStats()
        self.pool: Pool | None = None
        self.batch_mode: BatchMode | None = None
        self.interrupted = False
        self.expired_online = False
        self.mode = opts.mode or job.run.mode

    def interrupt(self) -> None:
        self.interrupted = True
        if self.pool is not None:
            self.pool.stop("interrupted")
        if self.batch_mode is not None:
            self.batch_mode.stop()

    async def execute(self) -> Summary:
        job = self.job
        source = check_job(job)
        async with endpoint(job, simulate=self.opts.simulate, base_url=self.opts.base_url,
                            env=self.opts.env) as (base_url, key, rpm, tpm):
            if not self.opts.simulate:  # the built-in simulator serves every model batch knows
                await check_model(job, base_url, key)
            store = Store(job.state.path)
            try:
                store.begin_run()
                if job.task.top_k is not None:
                    log.warning("top-k = %s is accepted for compatibility but not sent: Groq has no top_k "
                                "parameter and rejects requests that carry it", job.task.top_k)
                renderer = Renderer(job.task, key=job.input.key)
                if self.mode == "batch":
                    log.info("run: %d rows from %s -> %s; model %s at %s; Batch API, completion window %s",
                             source.num_rows, job.input.path, job.output.path, job.task.model, base_url,
                             job.run.completion_window)
                    expired = await self._batch(source, renderer, store, base_url, key)
                    if expired:
                        log.info("batch: sending the %d requests the Batch API did not answer in time "
                                 "online ([run] on-expired = \"online\")", expired)
                else:
                    _refuse_open_batches(job, store)
                    log.info("run: %d rows from %s -> %s; model %s at %s; %.0f req/min, %.0f tokens/min, "
                             "concurrency %d", source.num_rows, job.input.path, job.output.path,
                             job.task.model, base_url, rpm, tpm, job.limits.concurrency)
                if self.mode == "online" or self.expired_online:
                    await self._send_missing(source, renderer, store, base_url, key, rpm, tpm)
                return self._finish(source, renderer, store)
            finally:
                store.close()

    async def _batch(self, source: Source, renderer: Renderer, store: Store, base_url: str,
                     key: str | None) -> int:
        """Batch mode up to merged results; the number of expired requests to send online, if any."""
        job = self.job
        progress = BatchProgress(tty=self.opts.tty, enabled=self.opts.progress)
        folder = upload_folder(job.state.path)

        def batches() -> Iterator[list[Request]]:
            for row0, batch in source.numbered(self.opts.limit):
                yield [r for r in renderer.render_batch(batch, row0) if isinstance(r, Request)]

        async with Client(base_url, key, timeout_s=job.limits.request_timeout, connections=4) as client:
            mode = BatchMode(client, store, self.stats, progress, folder=folder,
                             window=job.run.completion_window, poll_max_s=job.run.poll_interval,
                             wait=self.opts.wait, job_name=job.file.name,
                             retry_failed=self.opts.retry_failed)
            self.batch_mode = mode
            if self.interrupted:
                mode.stop()
            try:
                outcome = await mode.run(batches)
            finally:
                progress.close()
                store.flush()
                remove_folder_if_empty(folder)
        if outcome.refused:
            raise FatalApiError("Groq refused batch(es) as a whole: " + "; ".join(outcome.refused) +
                                ". Nothing in them was answered; fix the cause and run again")
        if outcome.waiting:
            ids = ", ".join(u.batch_id or u.name for u in outcome.waiting[:5])
            more = f" and {len(outcome.waiting) - 5} more" if len(outcome.waiting) > 5 else ""
            why = "interrupted" if self.interrupted else "--no-wait"
            raise Stopped(f"{why}: {len(outcome.waiting)} batch(es) still running at Groq ({ids}{more}). "
                          "Run the same command again to collect them: it attaches to these batches and "
                          "submits nothing twice (python -m batch cancel JOB.toml cancels them).")
        if self.interrupted:
            raise Stopped("interrupted before every request was submitted; run the same command again "
                          "to continue (batches already submitted are attached to, not sent again).")
        if outcome.unanswered:
            only_expired = outcome.expired and not (outcome.cancelled or outcome.missing)
            if only_expired and job.run.on_expired == "online":
                self.expired_online = True
                return outcome.unanswered
            reasons = (("expired", outcome.expired), ("were cancelled", outcome.cancelled),
                       ("had no result in a completed batch", outcome.missing))
            why = " or ".join(w for w, flag in reasons if flag)
            hint = ', or set [run] on-expired = "online" to send expired ones online at once' \
                if outcome.expired and job.run.on_expired != "online" else ""
            raise Stopped(f"{outcome.unanswered} requests {why} at the Batch API without an answer; the "
                          "answers that came back are saved. Run the same command again to submit them in a "
                          f"new batch{hint}.")
        return 0

    async def _send_missing(self, source: Source, renderer: Renderer, store: Store, base_url: str,
                            key: str | None, rpm: float, tpm: float) -> None:
        job, total = self.job, _row_count(source, self.opts.limit)
        progress = Progress(total, self.stats, tty=self.opts.tty, enabled=self.opts.progress)

        loop = asyncio.get_running_loop()
        commit_pending = False

        def commit() -> None:
            nonlocal commit_pending
            commit_pending = False
            store.flush()

        def on_answer(answer: Answer) -> None:
            # Commit right after the current loop iteration: answers that arrive together share one
            # transaction, and a kill -9 loses no answer that was received (only those on the wire).
            nonlocal commit_pending
            store.put(answer)
            if not commit_pending:
                commit_pending = True
                loop.call_soon(commit)
            self.stats.record_answer(answer)
            progress.advance()

        async with Client(base_url, key, timeout_s=job.limits.request_timeout,
                          connections=job.limits.concurrency) as client:
            pacer = Pacer(rpm, tpm, learn_requests=job.limits.requests_per_minute is None,
                          learn_tokens=job.limits.tokens_per_minute is None)
            pool = Pool(client.chat, pacer, RetryPolicy(max_attempts=job.limits.max_attempts),
                        concurrency=job.limits.concurrency, on_answer=on_answer, stats=self.stats)
            self.pool = pool
            if self.interrupted:
                pool.stop("interrupted")
            try:
                await pool.run(self._pending(source, renderer, store, pool, progress))
            finally:
                progress.close()
                store.flush()
        if pool.fatal is not None:
            raise pool.fatal
        if pool.quota is not None:
            raise Stopped(_quota_message(pool.quota.limit, pool.quota.reset_s))
        if pool.stop_reason:
            raise Stopped("interrupted; answers so far are saved. Run the same command again to resume "
                          "(it sends only the rows that have no answer yet).")

    def _pending(self, source: Source, renderer: Renderer, store: Store, pool: Pool,
                 progress: Progress) -> Iterator[Request]:
        """The requests that still need sending, in input order, each once."""
        for row0, batch in source.numbered(self.opts.limit):
            rendered = renderer.render_batch(batch, row0)
            fps = {r.fingerprint for r in rendered if isinstance(r, Request)} - pool.outstanding
            missing = store.missing(fps, retry_failed=self.opts.retry_failed)
            for r in rendered:
                if (isinstance(r, Request) and r.fingerprint in missing
                        and r.fingerprint not in pool.outstanding):
                    missing.discard(r.fingerprint)  # later rows with the same request share its answer
                    yield r
                else:
                    progress.advance()

    def _finish(self, source: Source, renderer: Renderer, store: Store) -> Summary:
        job = self.job
        try:
            return self._write(source, renderer, store)
        except OSError as exc:  # disk full, folder removed mid-run, ...: every answer is in the store
            raise Stopped(f"could not write the output {job.output.path}: {exc}. Every answer is saved; "
                          "fix this and run the same command again (it sends nothing more).") from exc

    def _write(self, source: Source, renderer: Renderer, store: Store) -> Summary:
        job = self.job
        ok = failed = from_store = 0
        shape = structured.shape_of(job.task.response_format)
        with OutputWriter(job.output.path, job.output.format, source.schema, job.output.text_column,
                          shape) as out:
            for row0, batch in source.numbered(self.opts.limit):
                rendered = renderer.render_batch(batch, row0)
                answers = store.get_many(r.fingerprint for r in rendered if isinstance(r, Request))
                outcomes: list[Outcome] = []
                cells: list[dict[str, object]] = []
                for r in rendered:
                    cells.append({})
                    if isinstance(r, RowFailure):
                        outcomes.append(r.error)
                        failed += 1
                        continue
                    found = answers.get(r.fingerprint)
                    if found is None:  # cannot happen after a complete pass 1; never drop the row
                        outcomes.append("no answer was recorded for this row; run the job again")
                        failed += 1
                        continue
                    answer, earlier = found
                    if shape is not None and answer.ok:
                        # Checked here, not when it arrives: the store keeps what Groq answered, and
                        # the row fails (with its raw text) only in the output.
                        cells[-1], problem = structured.check(shape, answer.text)
                        if problem:
                            answer = replace(answer, error=problem)
                    outcomes.append(answer)
                    ok += answer.ok
                    failed += not answer.ok
                    from_store += earlier
                out.write(batch, outcomes, cells)
            rows = out.rows
        status = "complete" if failed == 0 else "failed-rows"
        message = None if failed == 0 else (f"{failed} rows failed; see the error column. Rows that failed "
                                            "transiently are retried by the next run (--retry-failed: all).")
        summary = Summary.build(self.stats, status=status, model=job.task.model, rows=rows, rows_ok=ok,
                                rows_failed=failed, rows_from_store=from_store, output=job.output.path,
                                message=message, mode=self.mode)
        summary.write_json(report_path(job))
        store.finish_run(summary.to_json())
        return summary


def _refuse_open_batches(job: Job, store: Store) -> None:
    """An online run would pay again for requests that batches at Groq already hold."""
    held = [u.batch_id or u.name for u in store.uploads(open_only=True)]
    if held:
        raise JobError(f"{job.file}: {len(held)} Batch API batch(es) of this job are not collected yet "
                       f"({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); sending their requests "
                       "online would pay for them twice. Collect them first: python -m batch run "
                       f"{job.file.name} --mode batch (or cancel them: python -m batch cancel "
                       f"{job.file.name})")


def report_path(job: Job) -> Path:
    return job.output.path.with_name(job.output.path.name + ".report.json")


def _row_count(source: Source, limit: int | None) -> int:
    return source.num_rows if limit is None else min(limit, source.num_rows)


def _quota_message(limit: str | None, retry_after: float | None) -> str:
    what = {"rpd": "requests per day", "tpd": "tokens per day"}.get(limit or "", "daily")
    when = ""
    if retry_after:
        at = datetime.now(UTC) + timedelta(seconds=retry_after)
        when = f"; it resets in about {timedelta(seconds=round(retry_after))} (at {at:%Y-%m-%d %H:%M} UTC)"
    return (f"Groq's {what} quota for this model is used up{when}. Answers so far are saved; run the same "
            "command again after the reset to continue.")
