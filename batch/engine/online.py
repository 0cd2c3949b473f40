"""Pass 1, online: every request the store has no answer for, through the pool, answers into the store.

    rows ─► prompts ─► store.missing ─► pool (limits, retry) ─► client ─► store

Requests are produced lazily, in input order, one group of rows at a time (`prompts.Group`: a chunk,
or fewer rows when they are large), so memory follows what is in flight rather than the input.
Identical requests (rows that would send the same bytes) go once, and on a store other calls fill at
the same time, a request one of them is sending is waited for rather than sent again (`shared`). A row
with the last run's request on its line takes the last run's answer without a search (`recall`). Every
row's fingerprint and stored answer are kept for pass 2 (`store.fingerprints`), so no row is rendered
or searched for twice. The producer hands the loop back between groups, so however long the scan over
answered rows, the loop (signals, answers, pacing) is never held long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from batch.engine.commits import Committer
from batch.engine.shared import Shared
from batch.job.config import LimitsSpec
from batch.job.endpoint import Endpoint
from batch.job.schema import Shape, judge
from batch.records import Answer, Request
from batch.render.packer import packer_for
from batch.render.packs import RESENT, resumed
from batch.render.prompts import Renderer
from batch.report.progress import Progress
from batch.report.summary import RunStats
from batch.send.client import Client
from batch.send.pacing import Pacer, Pacing
from batch.send.pool import Pool
from batch.send.retry import RetryPolicy
from batch.send.spendcap import SpendCap
from batch.store.answers import Store, stored_answer
from batch.store.database import StoreWriteError
from batch.store.fingerprints import RowFingerprints
from batch.store.recall import Recall, unrecalled
from batch.tables.source import Rows

# Builds the pacer of a run from its endpoint and limits; `local_pacer` unless a door brings its own
# (several partitions sharing one pacer, or a cluster's shared limiter).
PacerFactory = Callable[[Endpoint, LimitsSpec], Pacing]


def local_pacer(endpoint: Endpoint, limits: LimitsSpec) -> Pacing:
    """One process's pacer: from the endpoint's pace, learning the limits the job does not state."""
    return Pacer(endpoint.rpm, endpoint.tpm, learn_requests=limits.requests_per_minute is None,
                 learn_tokens=limits.tokens_per_minute is None)


class OnlinePass:
    """Sends what is missing; `stop()` stops taking new rows (requests in flight finish)."""

    def __init__(self, rows: Rows, renderer: Renderer, store: Store, stats: RunStats, *, limits: LimitsSpec,
                 limit: int | None, retry_failed: bool, pacer: PacerFactory = local_pacer,
                 shape: Shape | None = None, spend_cap: SpendCap | None = None,
                 before_first: Callable[[], Awaitable[None]] | None = None) -> None:
        self._spend_cap = spend_cap  # the run's spend cap ([limits] max-cost-usd)
        self._before_first = before_first  # awaited before the first request leaves (the model check)
        self._rows, self._renderer, self._store, self._stats = rows, renderer, store, stats
        self._pacer = pacer
        self._shape = shape  # a json_schema response format: answers are judged as they arrive
        self._limits, self._limit, self._retry_failed = limits, limit, retry_failed
        self.pool: Pool | None = None
        self.write_error: StoreWriteError | None = None
        self._stopped = False
        # every row's fingerprint, once pass 1 has seen every row
        self.fingerprints: RowFingerprints | None = None
        self._shared: Shared | None = None  # claims on requests, when other calls fill the store too

    def stop(self) -> None:
        self._stopped = True
        if self.pool is not None:
            self.pool.stop("interrupted")

    async def run(self, endpoint: Endpoint, progress: Progress) -> Pool:
        """Send; the pool, which says why it ended (`fatal`, `quota`, `stop_reason`)."""
        store, limits = self._store, self._limits

        def failed(exc: StoreWriteError) -> None:
            # A full disk stops the run (the answers in flight still arrive and stay buffered); the
            # error is raised once the pool has wound down.
            self.write_error = self.write_error or exc
            if self.pool is not None:
                self.pool.stop("the state cannot be written")

        committer = Committer(store, failed)
        if store.shared:
            self._shared = Shared(store, progress, retry_failed=self._retry_failed)

        def on_answer(answer: Answer) -> None:
            answer = judge(self._shape, answer)
            store.journal.hold(answer)
            committer.poke()  # committed off the loop (`Committer`)
            self._stats.record_answer(answer, counted=answer.error != RESENT)  # RESENT: its cost only
            progress.advance()

        async with Client(endpoint.base_url, endpoint.key, timeout_s=limits.request_timeout,
                          connections=limits.concurrency) as client:
            pool = Pool(client.chat, self._pacer(endpoint, limits),
                        RetryPolicy(max_attempts=limits.max_attempts), concurrency=limits.concurrency,
                        on_answer=on_answer, stats=self._stats, spend_cap=self._spend_cap)
            self.pool = pool
            if self._stopped:
                pool.stop("interrupted")
            # The claims outlive the commits: what is still claimed after them was never answered.
            async with self._shared.renewing() if self._shared else contextlib.nullcontext():
                try:
                    await pool.run(self._pending(pool, progress))
                finally:
                    await committer.drain()
                    try:
                        store.flush()
                    except StoreWriteError as exc:
                        failed(exc)
        if self.write_error is not None:
            raise self.write_error
        return pool

    async def _pending(self, pool: Pool, progress: Progress) -> AsyncIterator[Request]:
        """The requests that still need sending, in input order, each once."""
        if self.fingerprints is not None:
            self.fingerprints.close()
        keys = self.fingerprints = RowFingerprints(self._store.path.parent)
        recall = Recall(self._store)
        try:
            async for request in self._unanswered(pool, progress, keys, recall):
                yield request
        finally:
            recall.close()
        keys.finish()
        keys.unchanged = recall.unchanged

    async def _unanswered(self, pool: Pool, progress: Progress, keys: RowFingerprints,
                          recall: Recall) -> AsyncIterator[Request]:
        packer = packer_for(self._renderer, self._shape, tries=self._limits.max_attempts,
                            tokens_per_minute=lambda: pool.pacer.tokens_per_minute)
        for row0, chunk in self._rows.numbered(self._limit):
            for group in self._renderer.groups(chunk, row0):
                # A row with last run's request on its line has last run's answer: no search for it.
                recalled = recall.match(group.fingerprints)
                rest = unrecalled(group.fingerprints, recalled[1])
                fps = [fp for fp in rest if fp is not None and fp not in pool.outstanding]
                missing, stored, left = self._store.sort_out(fps, retry_failed=self._retry_failed)
                keys.add(group, stored, recalled)  # pass 2 takes these answers from here, not from the store
                if not missing:
                    progress.advance(len(group))
                shared = self._shared if missing else None
                if shared is not None:  # what another call is sending already, this one waits for
                    missing = shared.split(group, missing)
                for i, fp in enumerate(group.fingerprints if missing or shared else ()):
                    if fp is not None and fp in missing and fp not in pool.outstanding and \
                            (packer is None or fp not in packer):
                        missing.discard(fp)  # later rows with the same request share its answer
                        if self._before_first is not None:  # (no coroutine a row once it is done)
                            await self._first()
                        if packer is None:
                            yield group.request(i)
                            continue
                        # A row a stopped run left mid-way goes on from there (`packs.resumed`).
                        size, spent, tries = resumed(stored_answer(left[fp]) if fp in left else None)
                        for request in packer.add(group.request(i), size=size, spent=spent, attempts=tries):
                            yield request
                    elif shared is None or not shared.wait(fp):
                        progress.advance()
                await asyncio.sleep(0)  # the loop's turn: answers, signals and pacing wait no longer
        for request in packer.flush() if packer is not None else ():
            yield request
        if self._shared is not None:  # every request of ours is out: wait for the other calls'
            async for request in self._shared.settle(pool):
                await self._first()
                if packer is None:
                    yield request
                    continue
                # Out at once, not held for a pack: another call may be waiting for it.
                for each in [*packer.add(request), *packer.flush()]:
                    yield each

    async def _first(self) -> None:
        """Before the first request leaves: the model check, which raises (nothing sent) if the server
        refuses the job."""
        if self._before_first is not None:
            check, self._before_first = self._before_first, None
            await check()
