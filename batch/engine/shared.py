"""Pass 1 on a store other calls fill at the same time (the Python API's cache): each request is sent
by one call only, and the others wait for its answer (`store.claims`).

    group's missing requests ─► claim ─► ours: sent as usual
                                      ├─ another call's: noted, waited for once ours are all out
                                      └─ answered meanwhile: nothing to do (pass 2 finds the answer)

A waited-for row's answer is the claimant's, so pass 2 counts it as from the store, and the requests
sent by the calls add up to the distinct requests. Waiting starts only once this call has handed the
pool every request of its own, so two calls waiting on each other's requests both go on sending theirs.
A claimant that releases its claims without answering (stopped), dies, or stops renewing them (stuck)
loses them: the waiter claims those requests and sends them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import islice

from batch.records import Request
from batch.render.prompts import Group
from batch.report.progress import Progress
from batch.send.pool import Pool
from batch.store.answers import Store
from batch.store.claims import LEASE_S, Claims
from batch.store.database import StoreWriteError

POLL_S = 0.05  # between looks at the requests waited for: how late a waiter learns of an answer
POLL_MAX = 5000  # requests looked at per look (the first waited for: the claimant answers in order)


@dataclass
class _Wait:
    run: int  # the claimant's store run
    request: Request  # to send if the claimant goes away
    rows: int  # rows of this call with that request


class Shared:
    """One call's claims (`split` while producing, then `settle`), renewed while it runs (`renewing`)."""

    def __init__(self, store: Store, progress: Progress, *, retry_failed: bool) -> None:
        self._claims = Claims(store)
        self._progress, self._retry_failed = progress, retry_failed
        self._waiting: dict[str, _Wait] = {}

    def split(self, group: Group, missing: set[str]) -> set[str]:
        """Of the group's requests the store has no answer for, those this call sends; another call's
        are noted to wait for (each of their rows too: `wait`)."""
        mine, theirs, answered = self._claims.claim(sorted(missing), retry_failed=self._retry_failed)
        for fp in (*mine, *answered):  # waited for in an earlier group, and ours (or answered) now
            if (was := self._waiting.pop(fp, None)) is not None:
                self._progress.advance(was.rows)
        for fp, run in theirs.items():
            if fp in self._waiting:
                self._waiting[fp].run = run
        new = theirs.keys() - self._waiting.keys()
        for i, row_fp in enumerate(group.fingerprints if new else ()):
            if row_fp is not None and row_fp in new:  # its first row: the request to send if need be
                new.discard(row_fp)
                self._waiting[row_fp] = _Wait(theirs[row_fp], group.request(i), 0)
        return set(mine)

    def wait(self, fp: str | None) -> bool:
        """Whether this row's request is another call's: then it counts as a row waiting for it."""
        if fp is None or (waiting := self._waiting.get(fp)) is None:
            return False
        waiting.rows += 1
        return True

    async def settle(self, pool: Pool) -> AsyncIterator[Request]:
        """Wait for the other calls' answers; yields the requests this call takes over."""
        while self._waiting and not pool.stop_reason:
            looked = {fp: w.run for fp, w in islice(self._waiting.items(), POLL_MAX)}
            done, free, moved = self._claims.poll(looked)
            for fp, run in moved.items():
                self._waiting[fp].run = run
            if free:
                mine, theirs, answered = self._claims.claim(free, retry_failed=self._retry_failed)
                done += answered
                for fp, run in theirs.items():
                    self._waiting[fp].run = run
                for fp in mine:
                    taken = self._waiting.pop(fp)
                    self._progress.advance(taken.rows - 1)  # its answer advances the last one
                    yield taken.request
            for fp in done:
                self._progress.advance(self._waiting.pop(fp).rows)
            if not (done or free):
                await asyncio.sleep(POLL_S)

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """The claims renewed while the block runs (a claimant that stops renewing loses them), and
        released when it ends: the answers are committed by then, what is left was never answered."""
        task = asyncio.get_running_loop().create_task(self._renew())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])
            with contextlib.suppress(StoreWriteError):  # left to lapse: others wait a lease at most
                self._claims.release()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            with contextlib.suppress(StoreWriteError):  # a full disk: the commits stop the run
                self._claims.renew()
