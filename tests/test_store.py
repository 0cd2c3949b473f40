"""Tests for batch.store.answers: answers by fingerprint, what is still missing, durability and the lock."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch.records import Answer
from batch.sim import Simulator
from batch.store import runlog
from batch.store.answers import Store
from batch.store.database import StoreError

FULL = Answer(
    fingerprint="fp-full", text="Hello \u00e9\u5c71 \U0001f600\n\"quoted\"", input_tokens=80,
    output_tokens=120, total_tokens=200, reasoning_tokens=40, cached_tokens=64, finish_reason="stop",
    request_id="req_01k9",
    model="openai/gpt-oss-20b", latency_s=1.2345, queue_time=0.0213, total_time=0.104, attempts=2,
)
FAILED_PERMANENT = Answer.failure("fp-perm", "400 context_length_exceeded: too long", permanent=True,
                                  attempts=1, request_id="req_bad")
FAILED_TRANSIENT = Answer.failure("fp-trans", "503: Service Unavailable", permanent=False, attempts=6)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out.parquet.state.sqlite"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    s = Store(path)
    s.begin_run()
    yield s
    s.close()


def reopen(path: Path) -> Store:
    s = Store(path)
    s.begin_run()
    return s


def test_round_trip_keeps_every_field(store: Store) -> None:
    for a in (FULL, FAILED_PERMANENT, FAILED_TRANSIENT):
        store.put(a)
    store.flush()
    got = store.get_many(["fp-full", "fp-perm", "fp-trans", "fp-never"])
    assert set(got) == {"fp-full", "fp-perm", "fp-trans"}
    assert got["fp-full"] == (FULL, False)  # stored by this run
    assert got["fp-perm"][0] == FAILED_PERMANENT
    assert got["fp-perm"][0].permanent is True
    assert got["fp-trans"][0].permanent is False
    assert not got["fp-trans"][0].ok


def test_get_many_sees_buffered_answers_and_many_fingerprints(path: Path) -> None:
    s = Store(path, flush_rows=10_000, flush_s=3600)
    s.begin_run()
    answers = [Answer(fingerprint=f"fp{i:05d}", text=str(i), attempts=1) for i in range(1500)]
    for a in answers:
        s.put(a)
    got = s.get_many(a.fingerprint for a in answers)  # more than one IN (...) chunk
    assert {fp: a for fp, (a, _) in got.items()} == {a.fingerprint: a for a in answers}
    s.close()


def test_a_later_put_replaces_an_answer(store: Store) -> None:
    store.put(FAILED_TRANSIENT)
    store.flush()
    ok = Answer(fingerprint="fp-trans", text="fine now", attempts=1)
    store.put(ok)
    store.flush()
    assert store.get_many(["fp-trans"])["fp-trans"][0] == ok


def test_missing_never_asked(store: Store) -> None:
    assert store.missing(["a", "b"]) == {"a", "b"}
    assert store.missing([]) == set()


def test_missing_after_an_earlier_run(path: Path) -> None:
    first = reopen(path)
    for a in (FULL, FAILED_PERMANENT, FAILED_TRANSIENT):
        first.put(a)
    first.close()

    second = reopen(path)
    try:
        wanted = ["fp-full", "fp-perm", "fp-trans", "fp-new"]
        # ok: cached; permanent failure: not re-sent; transient failure: re-sent; new: sent.
        assert second.missing(wanted) == {"fp-trans", "fp-new"}
        assert second.missing(wanted, retry_failed=True) == {"fp-trans", "fp-perm", "fp-new"}
        got = second.get_many(["fp-full"])
        assert got["fp-full"] == (FULL, True)  # from an earlier run
    finally:
        second.close()


def test_a_failure_from_this_run_is_not_missing(store: Store) -> None:
    store.put(FAILED_TRANSIENT)
    store.put(FAILED_PERMANENT)
    store.flush()
    assert store.missing(["fp-trans", "fp-perm"]) == set()
    assert store.missing(["fp-trans", "fp-perm"], retry_failed=True) == set()


def test_buffered_answers_count_before_flush(path: Path) -> None:
    s = Store(path, flush_rows=10_000, flush_s=3600)
    s.begin_run()
    s.put(FULL)
    s.put(FAILED_TRANSIENT)
    assert s.missing(["fp-full", "fp-trans", "other"]) == {"other"}
    s.close()


def test_data_survives_close_and_reopen(path: Path) -> None:
    s = Store(path, flush_rows=10_000, flush_s=3600)
    s.begin_run()
    s.put(FULL)
    s.close()  # close flushes
    again = Store(path)
    try:
        assert again.get_many(["fp-full"])["fp-full"][0] == FULL
        assert list(again) == [FULL]
    finally:
        again.close()


def test_committed_answers_are_visible_to_another_connection(path: Path) -> None:
    # Committed means on disk (in the journal until a fold), and seen by a read-only look (`status`).
    s = reopen(path)
    s.put(FULL)
    s.flush()
    with sqlite3.connect(path) as db:
        assert json.loads(db.execute("SELECT answers FROM journal").fetchone()[0])[0][1] == FULL.text
    look = Store(path, readonly=True)
    assert look.get_many(["fp-full", "fp-never"]) == {"fp-full": (FULL, True)}
    assert look.counts()["ok"] == 1
    look.close()
    s.close()
    with sqlite3.connect(path) as db:  # folded at close
        assert db.execute("SELECT text FROM answers WHERE fingerprint='fp-full'").fetchone() == (FULL.text,)
        assert db.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)


def test_a_second_store_on_the_same_path_is_refused_while_the_first_is_open(path: Path) -> None:
    first = Store(path)
    try:
        with pytest.raises(StoreError) as info:
            Store(path)
        assert str(path) in str(info.value)
    finally:
        first.close()
    Store(path).close()  # free again once the first is closed


def test_garbage_file_is_a_store_error_with_advice(path: Path) -> None:
    path.write_bytes(b"this is not a database, just some text that happens to be here\n" * 100)
    with pytest.raises(StoreError) as info:
        Store(path)
    message = str(info.value)
    assert str(path) in message
    assert "Traceback" not in message
    assert "move it aside" in message.lower()
    # The failed open released its lock: after moving the file aside, the path works again.
    path.unlink()
    Store(path).close()


def test_store_from_another_schema_version_is_refused(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "999" in str(info.value)
    with sqlite3.connect(path) as db:  # the refused store was left untouched
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("999",)


def test_an_unreadable_store_ends_the_run_with_exit_2_before_anything_is_sent(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: Callable[..., Path],
        run_batch: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    url, sim = simulator
    (tmp_path / "in.csv").write_text("name,experience\nAda,Wrote a compiler.\n", encoding="utf-8")
    job = write_job("in.csv")
    state = tmp_path / "out.parquet.state.sqlite"
    state.write_bytes(b"this is not a database\n" * 100)

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr  # a job error: fix it, then run again
    assert str(state) in proc.stderr and "move it aside" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sim.log == [] and not (tmp_path / "out.parquet").exists()
    assert state.read_bytes() == b"this is not a database\n" * 100  # left as it was, for the user to look at


def test_runs_and_summary(path: Path) -> None:
    s = Store(path)
    first = s.begin_run()
    s.put(FULL)
    s.finish_run('{"ok": 1}')
    s.close()
    s = Store(path)
    try:
        assert s.begin_run() > first
        assert runlog.last_summary(s) == '{"ok": 1}'
        assert s.counts() == {"answers": 1, "ok": 1, "failed_permanent": 0, "failed_retryable": 0}
    finally:
        s.close()


def held_store(path: Path) -> Store:
    """A store whose answers are committed by the caller (`take`, `write_taken`), as an online run's."""
    s = Store(path, flush_rows=10_000, flush_s=3600)
    s.begin_run()
    return s


def stored_answers(path: Path, *fps: str) -> list[Answer]:
    """The answers a later reader finds in the file."""
    again = Store(path, readonly=True)
    try:
        got = again.get_many(fps)
        return [got[fp][0] for fp in fps]
    finally:
        again.close()


def test_group_commit_counts_taken_answers_as_stored_and_keeps_them_when_a_write_fails(path: Path) -> None:
    # The online pass hands what arrived to a committing thread (`take`, `write_taken`): while that
    # transaction runs the answers must not look missing (they would be paid for again), and a write
    # that fails must keep them for the next one; a later `flush` writes them all.
    s = held_store(path)
    s.journal.hold(FULL)
    assert s.journal.take()  # handed over to the committing thread
    assert s.missing(["fp-full", "fp-never"]) == {"fp-never"}
    s.journal.taken_done(ok=False)  # the thread's write failed (a full disk): kept, newer answers winning
    s.journal.hold(FAILED_PERMANENT)
    assert s.missing(["fp-full", "fp-perm", "fp-never"]) == {"fp-never"}
    assert s.journal.take()
    s.journal.write_taken()  # in any thread; here the caller's
    s.journal.taken_done(ok=True)
    assert not s.journal.take()
    s.close()
    assert stored_answers(path, "fp-full", "fp-perm") == [FULL, FAILED_PERMANENT]


def test_a_commit_left_unconfirmed_is_written_at_close(path: Path) -> None:
    # A run cancelled while its committing thread ran never hears back (`taken_done`): close writes
    # the taken answers again (INSERT OR REPLACE: the same rows), so none is lost.
    s = held_store(path)
    s.journal.hold(FULL)
    assert s.journal.take()
    s.close()
    assert stored_answers(path, "fp-full") == [FULL]
