"""Batch mode: a run's requests through Groq's Batch API (files and batches) instead of one by one.

    pending requests ─► JSONL files (≤ 50,000 lines, ≤ 100 MB) ─► upload ─► batch ─► poll ─► merge ─► store

Every step is written to the ledger the moment Groq confirms it, before the next is tried, so a run
that dies anywhere is continued by the same command and nothing is paid twice (`submit` asks Groq
what an earlier try left). A request held by a batch not merged yet is never sent again; requests a
batch left unanswered (expired, cancelled) stay pending. A batch that fails validation fails the lines
Groq names (permanent row errors), and its other lines are submitted again in a new batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.batchapi.download import result_parts
from batch.batchapi.endpoints import BatchApi
from batch.batchapi.files import ChunkWriter
from batch.batchapi.packed import PackedBatch
from batch.batchapi.refused import refused
from batch.batchapi.steps import Trace
from batch.batchapi.submit import Submitter
from batch.errors import ApiError, FatalApiError
from batch.job.schema import Shape, judge
from batch.records import Request
from batch.render.prompts import Group
from batch.report.progress import BatchProgress
from batch.report.summary import RunStats
from batch.send.spendcap import SpendCap
from batch.store.answers import Store
from batch.store.ledger import Ledger, Upload

log = logging.getLogger("batch")

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})  # a batch in one of these never changes
MAX_ROUNDS = 5  # submissions in one run: the first, and again after a validation failure rejected lines


@dataclass
class Collected:
    waiting: list[Upload] = field(default_factory=list)  # still running at Groq when the run ended
    unanswered: int = 0  # requests an expired or cancelled batch did not answer
    expired: bool = False
    cancelled: bool = False
    missing: bool = False  # a completed batch had no result for some requests
    refused: list[str] = field(default_factory=list)  # batches Groq failed as a whole, with its reasons


class BatchMode:
    """One run's Batch API work; `stop()` (a signal) ends the waiting, never a step half-done."""

    def __init__(self, client: BatchApi, store: Store, stats: RunStats, progress: BatchProgress, *,
                 folder: Path, window: str, poll_max_s: float, wait: bool, job_name: str,
                 retry_failed: bool = False, shape: Shape | None = None,
                 spend_cap: SpendCap | None = None, trace: Trace | None = None,
                 packed: PackedBatch | None = None) -> None:
        self._client, self._store, self._stats, self._progress = client, store, stats, progress
        self._ledger, self._trace = Ledger(store), trace or Trace(stats)
        self._folder, self._poll_max, self._wait_for = folder, poll_max_s, wait
        self._retry_failed = retry_failed
        self._shape = shape  # a json_schema response format: results are judged as they are merged
        self._spend_cap = spend_cap  # the spend cap: requests are submitted while their worst case fits
        self._reserved: dict[str, float] = {}  # fingerprint -> worst case, for those submitted this run
        # Names are unique to this store, so a file found on Groq under one is ours and no other job's.
        self._prefix = "batch-" + store.meta("upload_prefix", f"{random.getrandbits(48):012x}")
        self._left: set[str] = set()  # fingerprints a batch left unanswered this run: not re-submitted
        self._stopped = False
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._packed = packed  # rows-per-request: requests go in packs, taken apart at merge
        self._steps = Submitter(client, store, stats, window=window, job_name=job_name, folder=folder)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self, batches: Callable[[], Iterator[Group]]) -> Collected:
        """Recover what an earlier run left half-done, submit what is missing, wait, merge."""
        outcome = Collected()
        for round_ in range(1, MAX_ROUNDS + 1):
            with self._trace.submitting(round_):
                if round_ == 1:
                    await self._recover()
                todo = self._missing(batches())
                submitted = 0 if self._stopped else await self._submit(
                    self._packed.requests(todo) if self._packed else todo)
            rejected = await self._trace.waited(self._watch(outcome))
            if self._stopped or outcome.waiting or not (rejected or (self._packed and self._packed.resend)):
                break
            log.info("batch: submitting the requests Groq did not reject again%s",
                     "" if submitted else " (none submitted this round)")
        return outcome

    # -- what to send -------------------------------------------------------------------------------
    def _missing(self, groups: Iterator[Group]) -> Iterator[Request]:
        for group in groups:
            fps = {fp for fp in group.fingerprints if fp is not None}
            todo = self._store.missing(fps, retry_failed=self._retry_failed)
            if self._packed:  # rows of packs that came back without their item
                todo |= fps & self._packed.resend
            todo = todo - self._ledger.held(todo) - self._left if todo else todo
            for i, fp in enumerate(group.fingerprints if todo else ()):
                if fp is not None and fp in todo:
                    todo.discard(fp)  # identical rows share one request
                    yield group.request(i)

    async def _submit(self, requests: Iterable[Request]) -> int:
        writer = ChunkWriter(self._folder)
        sent = 0
        try:
            for r in requests:
                if self._stopped:
                    break
                if writer.holds(r.fingerprint):
                    continue
                if self._spend_cap is not None:
                    cost = self._spend_cap.try_reserve(r.est_tokens, batch=True)
                    if cost is None:  # the spend cap: submit what fits; the next run continues
                        break
                    self._reserved[r.fingerprint] = cost
                full = writer.add(r)
                if self._packed:
                    self._packed.written(r)
                if full is not None:
                    sent += await self._send(full.path, full.sha256, full.fingerprints, full.size)
            last = writer.finish()
            if last is not None and not self._stopped:
                sent += await self._send(last.path, last.sha256, last.fingerprints, last.size)
        finally:
            writer.discard()
        return sent

    async def _send(self, path: Path, sha256: str, fingerprints: list[str], size: int) -> int:
        if self._stopped:
            path.unlink(missing_ok=True)
            return 0
        upload = self._ledger.add(self._prefix, sha256[:12], fingerprints, size)  # before a byte leaves
        if self._packed:
            self._packed.recorded(upload.id, fingerprints)
        path.replace(self._folder / upload.name)
        log.info("batch: uploading %s (%d requests, %.1f MB)", upload.name, len(fingerprints), size / 1e6)
        await self._steps.advance(upload, look_first=False)
        return len(fingerprints)

    # -- recovery ----------------------------------------------------------------------------------
    async def _recover(self) -> None:
        # A file still being written when its run died was never recorded nor uploaded: the store's
        # lock means no other run is writing one now, so each is an orphan (its requests are pending).
        for orphan in self._folder.glob("writing-*.jsonl"):
            orphan.unlink(missing_ok=True)
        for u in self._ledger.uploads(open_only=True):
            if u.batch_id is None:
                log.info("batch: continuing %s, left %s by an earlier run", u.name, u.status)
                await self._steps.advance(u, look_first=True)

    # -- waiting and merging ------------------------------------------------------------------------
    async def _watch(self, outcome: Collected) -> bool:
        """Poll every open batch until all are merged (or, without waiting, once); True when a batch
        failed validation with line errors, so that the rest of its lines need a new batch."""
        delay, rejected = 1.0, False
        while True:
            for u in self._ledger.uploads(open_only=True):
                if u.batch_id is None:
                    continue  # a step failed this run; the next run continues it
                obj = await self._poll(self._trace.poll(u))
                if obj is not None and obj.get("status") in ENDED:  # the fields merge uses never change
                    rejected |= await self._trace.merged(u, obj, self._merge(u, obj, outcome))
            still = [u for u in self._ledger.uploads(open_only=True) if u.batch_id is not None]
            if not still or not self._wait_for or self._stopped:
                outcome.waiting = still
                return rejected
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # the wait ends early on stop()
                await self._trace.sleep(asyncio.wait_for(self._wake.wait(), delay))
            delay = min(delay * 1.5, self._poll_max)

    async def _poll(self, u: Upload) -> dict[str, Any] | None:
        assert u.batch_id is not None
        try:
            obj = await self._client.get_batch(u.batch_id)
        except FatalApiError as exc:
            if exc.status != 404:
                raise
            self._steps.give_up(u, f"Groq does not know batch {u.batch_id} (HTTP 404: another account or "
                                   "server?); its requests go into a new batch")
            return None
        except ApiError as exc:  # a flaky poll is not a reason to stop; the next one may pass
            log.warning("batch: could not check %s: %s", u.batch_id, exc)
            return None
        counts = obj.get("request_counts") or {}
        status = str(obj.get("status"))
        self._ledger.update(u.id, status=status, counts=json.dumps(counts), batch=obj)
        self._progress.show(u.batch_id, status, int(counts.get("completed") or 0),
                            int(counts.get("failed") or 0), int(counts.get("total") or u.lines))
        return obj

    async def _merge(self, u: Upload, obj: dict[str, Any], outcome: Collected) -> bool:
        """Bring a finished batch's results into the store; mark it merged. True if it was refused
        line by line (its other lines need submitting again)."""
        expected = self._ledger.fingerprints(u.id)
        left = set(expected)  # not answered yet (`expected` stays whole: an answer may come twice)
        # Part by part, one transaction each, off the loop: no file is held whole. The batch is marked
        # merged after the last part, so a run that dies halfway leaves it to the next, which merges
        # the same files again (INSERT OR REPLACE: the same rows). All files are checked before part 1.
        async with contextlib.aclosing(result_parts(self._client, obj, self._folder / u.name, self._rng,
                                                    lambda: self._stopped)) as got:
            packs = self._packed.lines(u.id) if self._packed else {}
            async for part in got:
                merged = []
                for a in part.answers:
                    if a.fingerprint in expected:
                        if self._spend_cap is not None and a.fingerprint in self._reserved:
                            self._spend_cap.settle(self._reserved.pop(a.fingerprint), a, batch=True)
                        left.discard(a.fingerprint)
                        line = packs.get(a.fingerprint)
                        if self._packed and line:  # its rows' answers, counted in the figures there
                            merged += [judge(self._shape, each) for each in self._packed.split(line, a)]
                        else:
                            merged.append(a := judge(self._shape, a))
                            self._stats.record_answer(a, batch=True)
                await asyncio.to_thread(self._store.put_many, merged)
        status = str(obj.get("status"))
        rejected = status == "failed" and refused(u, obj, left, outcome.refused, ledger=self._ledger,
                                                   store=self._store, packed=self._packed)
        if left and status != "failed":
            self._left |= left
            outcome.unanswered += len(left)
            outcome.expired |= status == "expired"
            outcome.cancelled |= status == "cancelled"
            outcome.missing |= status == "completed"
            if status == "completed":
                log.warning("batch: %s completed without a result for %d requests; they stay pending",
                            u.batch_id, len(left))
        self._store.flush()
        self._ledger.update(u.id, status=status, done=1)
        (self._folder / u.name).unlink(missing_ok=True)
        log.info("batch: %s %s: %d results merged into the store%s", u.batch_id, status, len(expected) -
                 len(left), f", {len(left)} requests unanswered" if left and status != "failed" else "")
        return rejected
