"""The group commit of an online pass's answers: a thread of its own writes them to the store's journal,
one transaction at a time, so that the loop never waits for SQLite (about a sixth of its time against
a fast server when it committed itself).

What arrives while a transaction is written goes into the next. At the pace of a real API (a few
answers a transaction) each transaction begins as soon as the last one ends, and a kill -9 loses no
answer received beyond those of the transaction being written. Only when a transaction held `BUSY`
answers or more (a local server answering thousands a second, the loop busy with nothing else) does
the next begin `GAP_S` after it began, holding what arrived meanwhile: each transaction hands the
interpreter lock between the loop's thread and the committing one a few times, each handover waits
for the operating system to run the other thread, and back-to-back transactions (about a hundred a
second against an instant server) cost the loop a tenth of its time, where twenty a second cost it
little (bench/RESULTS.md). At that pace a kill -9 loses at most the answers of the last `GAP_S` too;
the next run sends their requests again. A store that other processes share (`Store.shared`: they
wait on its answers) is never kept waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from batch.engine.memory import give_back
from batch.store.answers import Store
from batch.store.database import StoreWriteError

GAP_S = 0.05  # seconds from a busy transaction's start to the next's
BUSY = 32  # answers in a transaction that make the next one keep the gap
TRIM_ROWS = 10_000  # answers committed between two hand-backs of freed memory (`memory.give_back`)


class Committer:
    """Commits what the store's journal holds (`poke` after each `hold`), off the loop."""

    def __init__(self, store: Store, failed: Callable[[StoreWriteError], None]) -> None:
        self._store, self._failed = store, failed
        self._task: asyncio.Task[None] | None = None
        # Its own thread, always the same: each thread the C allocator sees keeps an arena of its own,
        # and commits spread over the loop's default pool held 30 MB more by a million rows.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-commit")
        self._broken = False  # after a failed write (or the drain), answers stay buffered for `flush`
        self._waiting = 0  # callers of `settled` or `drain`: while any waits, no gap is kept
        self._hurry = asyncio.Event()
        self._since_trim = 0

    def poke(self) -> None:
        if self._task is None and not self._broken:
            self._task = asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        journal = self._store.journal
        loop = asyncio.get_running_loop()
        try:
            while taken := journal.take():
                began = loop.time()
                try:
                    await loop.run_in_executor(self._thread, self._write, taken)
                except StoreWriteError as exc:
                    journal.taken_done(False)
                    self._broken = True
                    self._failed(exc)
                    return
                journal.taken_done(True)
                if taken >= BUSY and not self._store.shared and not self._hurry.is_set() and \
                        (rest := began + GAP_S - loop.time()) > 0:
                    with contextlib.suppress(TimeoutError):  # the gap, cut short by a caller waiting
                        await asyncio.wait_for(self._hurry.wait(), rest)
        finally:
            self._task = None

    def _write(self, taken: int) -> None:
        """In the committing thread: the transaction; every `TRIM_ROWS` answers, the memory the
        commits freed handed back (a large transaction's rows and JSON leave this thread's allocator
        arena holding pages that the C allocator keeps unless asked: 10-15 MB by the end of some
        100,000-row runs)."""
        self._store.journal.write_taken()
        self._since_trim += taken
        if self._since_trim >= TRIM_ROWS:
            self._since_trim = 0
            give_back()

    async def settled(self) -> None:
        """Wait until what was held so far is committed (or its commit failed); commits go on after."""
        self._waiting += 1
        self._hurry.set()
        try:
            while self._task is not None:
                await asyncio.wait([self._task])
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._hurry.clear()

    async def drain(self) -> None:
        """Commit what is held, without gaps; then no more commits here (the store's `flush` writes
        whatever arrives after)."""
        self._waiting += 1
        self._hurry.set()
        if self._task is not None:
            await asyncio.wait([self._task])
        self._broken = True
        self._thread.shutdown(wait=False)
