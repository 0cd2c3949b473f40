"""Tests for batch.engine.commits: answers that arrive faster than the gap between transactions share
one, every answer held is committed, and a caller that waits for the commits does not wait out a gap."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from batch.engine import commits
from batch.engine.commits import Committer
from batch.records import Answer
from batch.store.answers import Store
from batch.store.database import StoreWriteError


def ok(fp: str) -> Answer:
    return Answer(fingerprint=fp, text=f"answer {fp}", attempts=1)


def journaled(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT value ->> 0 FROM journal, json_each(journal.answers)").fetchall()
    return {fp for (fp,) in rows}


class Counted:
    """The journal's commits, counted as the committing thread makes them."""

    def __init__(self, store: Store) -> None:
        self.transactions: list[int] = []
        write = store.journal.write_taken

        def counted() -> None:
            self.transactions.append(len(store.journal._taken))
            write()
        store.journal.write_taken = counted  # type: ignore[method-assign]


async def arrive(store: Store, committer: Committer, fps: list[str]) -> None:
    """As the online pass does it: one answer at a time, the loop turning between them."""
    for fp in fps:
        store.journal.hold(ok(fp))
        committer.poke()
        await asyncio.sleep(0)


def stored(path: Path) -> set[str]:
    """Committed: in the journal, or (a shared store's) straight in the answers."""
    with sqlite3.connect(path) as db:
        return journaled(path) | {fp for (fp,) in db.execute("SELECT fingerprint FROM answers")}


async def until_stored(path: Path, fps: set[str]) -> None:
    for _ in range(1000):  # (bounded) the committing thread's time
        if stored(path) >= fps:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not committed: {sorted(fps - stored(path))[:5]}")


@pytest.fixture
def long_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "GAP_S", 3600.0)  # nothing but a waiting caller ends this gap


@pytest.mark.usefixtures("long_gap")
def test_after_a_busy_transaction_what_arrives_within_the_gap_shares_the_next(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path)
    store.begin_run()
    counted = Counted(store)
    fps = [f"fp{i}" for i in range(200)]
    busy = fps[:commits.BUSY]

    async def main() -> None:
        committer = Committer(store, lambda exc: None)
        for fp in busy:  # in one turn of the loop: one transaction of BUSY answers
            store.journal.hold(ok(fp))
            committer.poke()
        await until_stored(path, set(busy))
        await arrive(store, committer, fps[len(busy):])  # within its gap: they wait for the next
        assert stored(path) == set(busy)
        await asyncio.wait_for(committer.settled(), 60)  # a waiting caller cuts the gap short
        await committer.drain()

    asyncio.run(main())
    assert counted.transactions == [len(busy), len(fps) - len(busy)]
    assert stored(path) == set(fps)
    store.close()
    with sqlite3.connect(path) as db:  # folded at close, every answer on its row
        assert dict(db.execute("SELECT fingerprint, text FROM answers").fetchall()) == {
            fp: f"answer {fp}" for fp in fps}


@pytest.mark.usefixtures("long_gap")
@pytest.mark.parametrize("shared", [False, True], ids=["a few at a time", "a shared store"])
def test_answers_at_an_api_pace_or_into_a_shared_store_are_committed_at_once(
        tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path, shared=shared)
    store.begin_run()
    # A shared store's transactions may be as large as they come: it never waits.
    sizes = [2 * commits.BUSY, 3, 1] if shared else [3, 1, commits.BUSY - 1, 2]

    async def main() -> None:
        committer = Committer(store, lambda exc: None)
        done: set[str] = set()
        for n, size in enumerate(sizes):  # no caller waits: only the rule keeps the gap away
            fps = [f"fp{n}-{i}" for i in range(size)]
            for fp in fps:
                store.journal.hold(ok(fp))
                committer.poke()
            done |= set(fps)
            await until_stored(path, done)
        await committer.drain()

    asyncio.run(main())
    store.close()


def test_a_failed_commit_keeps_its_answers_for_the_flush_and_stops_the_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(path)
    store.begin_run()
    failures: list[StoreWriteError] = []

    def refuse() -> None:
        raise StoreWriteError(path, sqlite3.OperationalError("database or disk is full"))
    store.journal.write_taken = refuse  # type: ignore[method-assign]

    async def main() -> None:
        committer = Committer(store, failures.append)
        await arrive(store, committer, ["a", "b"])
        await asyncio.wait_for(committer.settled(), 60)
        await arrive(store, committer, ["c"])  # after a failure, nothing more is committed here
        await committer.drain()

    asyncio.run(main())
    assert len(failures) == 1 and stored(path) == set()
    del store.journal.write_taken  # the flush writes what the commits could not
    store.flush()
    assert stored(path) == {"a", "b", "c"}
    store.close()
