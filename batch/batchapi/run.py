"""Pass 1 through the Batch API: pending requests into files and batches, their results into the store.

What the engine calls instead of the online pass when a run's mode is "batch". It turns how the
batches ended into the run's outcome: every request answered (go on to pass 2), some expired and the
job says to send those online (their number), or a stop the next run resumes from (`Stopped`), or a
refusal of a whole batch, or of the Batch API itself on a plan without it (`FatalApiError`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from batch.batchapi.endpoints import BatchApi
from batch.batchapi.files import remove_folder_if_empty, upload_folder
from batch.batchapi.mode import BatchMode, Collected
from batch.batchapi.packed import PackedBatch
from batch.batchapi.steps import Trace
from batch.errors import FatalApiError, JobError, Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.job.schema import shape_of
from batch.render.packer import packer_for
from batch.render.prompts import Group, Renderer
from batch.report.phases import Phase, no_phase
from batch.report.progress import BatchProgress
from batch.report.summary import RunStats
from batch.send.client import Client
from batch.send.spendcap import SpendCap
from batch.store.answers import Store
from batch.store.fingerprints import RowFingerprints
from batch.store.ledger import Ledger
from batch.store.recall import Recall, unrecalled
from batch.tables.source import Rows

log = logging.getLogger("batch")
NOT_FOR_PLAN = "not_available_for_plan"  # Groq's 403 code for a plan without the Batch API


class BatchPass:
    """`stop()` ends the waiting (batches go on at Groq; the next run attaches), never a step half-done."""

    def __init__(self, job: Job, rows: Rows, renderer: Renderer, store: Store, stats: RunStats, *,
                 limit: int | None, retry_failed: bool, wait: bool,
                 spend_cap: SpendCap | None = None, phase: Phase = no_phase) -> None:
        self._job, self._rows, self._renderer, self._store, self._stats = job, rows, renderer, store, stats
        self._spend_cap, self._phase = spend_cap, phase
        self._limit, self._retry_failed, self._wait = limit, retry_failed, wait
        self._mode: BatchMode | None = None
        self.stopped = False
        # every row's fingerprint, from the first scan, for pass 2
        self.fingerprints: RowFingerprints | None = None

    def stop(self) -> None:
        self.stopped = True
        if self._mode is not None:
            self._mode.stop()

    async def run(self, endpoint: Endpoint, progress: BatchProgress) -> int:
        """Up to merged results; the number of expired requests to send online, if any."""
        job = self._job
        folder = upload_folder(job.state.path)

        def chunks() -> Iterator[Group]:
            # The first scan keeps every row's fingerprint for pass 2; a later round only re-reads.
            if self.fingerprints is not None:
                for row0, chunk in self._rows.numbered(self._limit):
                    yield from self._renderer.groups(chunk, row0)
                return
            keys = self.fingerprints = RowFingerprints(self._store.path.parent)
            recall = Recall(self._store)
            try:
                for row0, chunk in self._rows.numbered(self._limit):
                    for group in self._renderer.groups(chunk, row0):
                        recalled = recall.match(group.fingerprints)
                        keys.add(group, None, recalled)
                        fps = unrecalled(group.fingerprints, recalled[1])
                        yield group if fps is group.fingerprints else Group(
                            group.first_row, fps, group.errors, group.request)
            finally:
                recall.close()
            keys.finish()
            keys.unchanged = recall.unchanged

        async with Client(endpoint.base_url, endpoint.key, timeout_s=job.limits.request_timeout,
                          connections=4) as client:
            mode = BatchMode(BatchApi(client), self._store, self._stats, progress, folder=folder,
                             window=job.run.completion_window, poll_max_s=job.run.poll_interval,
                             wait=self._wait, job_name=job.file.name, retry_failed=self._retry_failed,
                             shape=shape_of(job.task.response_format), spend_cap=self._spend_cap,
                             packed=self._packs(),
                             trace=Trace(self._stats, self._phase))
            self._mode = mode
            if self.stopped:
                mode.stop()
            try:
                collected = await mode.run(chunks)
            except FatalApiError as exc:
                if exc.code != NOT_FOR_PLAN:
                    raise
                raise FatalApiError(
                    f"Groq's Batch API is not available on this account's plan ({exc.describe()}). Run the "
                    'job online instead: [run] mode = "online" (or --mode online; mode="online" in Python). '
                    "Nothing was submitted: the requests without an answer are all still to be sent.",
                    status=exc.status, code=exc.code) from exc
            finally:
                self._store.flush()
                remove_folder_if_empty(folder)
        return self._outcome(collected)

    def _packs(self) -> PackedBatch | None:
        """rows-per-request: the rows go in packs, each small enough for the model's context (the
        Batch API paces itself: no per-minute limit applies)."""
        shape = shape_of(self._job.task.response_format)
        packer = packer_for(self._renderer, shape, tries=self._job.limits.max_attempts)
        return PackedBatch(self._store, packer, shape, self._stats) if packer is not None else None

    def _outcome(self, got: Collected) -> int:
        job = self._job
        if got.refused:
            raise FatalApiError("Groq refused batch(es) as a whole: " + "; ".join(got.refused) +
                                ". Nothing in them was answered; fix the cause and run again")
        if got.waiting:
            ids = ", ".join(u.batch_id or u.name for u in got.waiting[:5])
            more = f" and {len(got.waiting) - 5} more" if len(got.waiting) > 5 else ""
            why = "interrupted" if self.stopped else "--no-wait"
            raise Stopped(f"{why}: {len(got.waiting)} batch(es) still running at Groq ({ids}{more}). "
                          "Run the same command again to collect them: it attaches to these batches and "
                          "submits nothing twice (python -m batch cancel JOB.toml cancels them).")
        if self._spend_cap is not None and self._spend_cap.reached:
            raise Stopped(self._spend_cap.message())
        if self.stopped:
            raise Stopped("interrupted before every request was submitted; run the same command again "
                          "to continue (batches already submitted are attached to, not sent again).")
        if not got.unanswered:
            return 0
        only_expired = got.expired and not (got.cancelled or got.missing)
        if only_expired and job.run.on_expired == "online":
            return got.unanswered
        reasons = (("expired", got.expired), ("were cancelled", got.cancelled),
                   ("had no result in a completed batch", got.missing))
        why = " or ".join(w for w, flag in reasons if flag)
        hint = ', or set [run] on-expired = "online" to send expired ones online at once' \
            if got.expired and job.run.on_expired != "online" else ""
        raise Stopped(f"{got.unanswered} requests {why} at the Batch API without an answer; the answers "
                      "that came back are saved. Run the same command again to submit them in a new "
                      f"batch{hint}.")


def refuse_open_batches(job: Job, store: Store) -> None:
    """An online run would pay again for requests that batches at Groq already hold."""
    held = [u.batch_id or u.name for u in Ledger(store).uploads(open_only=True)]
    if held:
        raise JobError(f"{job.file}: {len(held)} Batch API batch(es) of this job are not collected yet "
                       f"({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); sending their requests "
                       "online would pay for them twice. Collect them first: python -m batch run "
                       f"{job.file.name} --mode batch (or cancel them: python -m batch cancel "
                       f"{job.file.name})")

