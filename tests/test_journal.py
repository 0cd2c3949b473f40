"""Tests for batch.store.journal: answers committed to the journal count as stored before they are folded,
folds keep the latest answer of a fingerprint, a read-only look sees the journal, and a journal a
killed run left is folded (not paid for again) by the next one."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from batch.records import Answer
from batch.store import journal
from batch.store.answers import Store


def ok(fp: str, text: str = "yes") -> Answer:
    return Answer(fingerprint=fp, text=text, input_tokens=3, output_tokens=1, total_tokens=4, attempts=1,
                  latency_s=0.125, model="m")


def failed(fp: str) -> Answer:
    return Answer.failure(fp, "503: busy", permanent=False, attempts=3)


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return sum(len(json.loads(r[0])) for r in db.execute("SELECT answers FROM journal"))


def answers_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out.parquet.state.sqlite"


def commit(store: Store, *answers: Answer) -> None:
    """As the online run's committing thread does it."""
    for a in answers:
        store.journal.hold(a)
    assert store.journal.take()
    store.journal.write_taken()
    store.journal.taken_done(True)


def test_a_journaled_answer_is_neither_missing_nor_looked_up_until_it_is_folded(path: Path) -> None:
    s = Store(path)
    s.begin_run()
    commit(s, ok("a"), failed("b"))
    assert journal_rows(path) == 2 and answers_rows(path) == 0  # on disk, not folded yet
    # A later row with the same request must not be sent again (it would be paid for twice); its
    # answer is taken from the store in pass 2, like one still on the wire.
    assert s.missing(["a", "b", "c"]) == {"c"}
    assert s.lookup(["a", "b", "c"]) == ({"c"}, {})
    got = s.get_many(["a", "b", "c"])  # reading folds first
    assert got["a"][0] == ok("a") and got["b"][0] == failed("b") and "c" not in got
    assert journal_rows(path) == 0 and answers_rows(path) == 2
    s.close()


def test_the_committing_thread_folds_every_fold_rows_and_nothing_is_lost(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "FOLD_ROWS", 25)
    s = Store(path)
    s.begin_run()
    for start in range(0, 100, 10):
        commit(s, *(ok(f"fp{i:03d}", f"answer {i}") for i in range(start, start + 10)))
        fps = [f"fp{i:03d}" for i in range(100)]
        assert s.lookup(fps)[0] == set(fps[start + 10:])
    assert answers_rows(path) >= 75, "the thread did not fold"
    assert journal_rows(path) < 25
    s.close()
    assert answers_rows(path) == 100 and journal_rows(path) == 0
    again = Store(path, readonly=True)
    assert {fp: a.text for fp, (a, _) in again.get_many([f"fp{i:03d}" for i in range(100)]).items()} == {
        f"fp{i:03d}": f"answer {i}" for i in range(100)}
    again.close()


def test_the_latest_answer_of_a_fingerprint_wins_in_a_fold_and_in_a_look(path: Path) -> None:
    s = Store(path, flush_rows=1)
    s.begin_run()
    s.put(failed("x"))  # a failure, then (a later run's retry, say) an answer: the answer wins
    s.put(ok("x", "second"))
    s.put(ok("y", "first"))
    s.put(ok("y", "second"))
    look = Store(path, readonly=True)  # while the run writes: sees the journal over the answers
    assert {fp: a.text for fp, (a, _) in look.get_many(["x", "y"]).items()} == {"x": "second", "y": "second"}
    assert look.counts() == {"answers": 2, "ok": 2, "failed_permanent": 0, "failed_retryable": 0}
    look.close()
    s.close()
    assert stored_text(path) == {"x": "second", "y": "second"}


def stored_text(path: Path) -> dict[str, str | None]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT fingerprint, text FROM answers ORDER BY fingerprint").fetchall())


def test_a_journal_left_behind_is_folded_when_the_store_is_next_opened(path: Path) -> None:
    s = Store(path)
    s.begin_run()
    commit(s, ok("kept"))
    # A run killed here never closes its store: the answer is only in the journal.
    copy = path.with_name("copy.sqlite")
    with sqlite3.connect(path) as db, sqlite3.connect(copy) as out:
        db.backup(out)
    s.close()
    assert journal_rows(copy) == 1 and answers_rows(copy) == 0
    again = Store(copy)
    again.begin_run()
    assert again.missing(["kept", "new"]) == {"new"}
    assert answers_rows(copy) == 1 and journal_rows(copy) == 0
    again.close()


def test_a_journal_from_another_version_keeps_the_columns_this_one_knows(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as db:  # a version with a column this one lacks, another it lacks
        db.execute("INSERT INTO journal VALUES (?, ?)", ("fingerprint,text,future,attempts,permanent,run",
                                                         json.dumps([["old", "hi", 7, 1, 0, 1]])))
    s = Store(path)
    assert s.get_many(["old"])["old"][0] == Answer(fingerprint="old", text="hi", attempts=1)
    s.close()


def test_a_shared_store_commits_straight_into_the_answers(path: Path) -> None:
    s = Store(path, shared=True)
    s.begin_run()
    commit(s, ok("a"))
    assert answers_rows(path) == 1 and journal_rows(path) == 0
    s.close()


def test_a_bulk_put_goes_straight_into_the_answers_after_what_the_journal_holds(path: Path) -> None:
    # A Batch API result file is already one bulk write; the journal's older answers are folded first
    # (folded after it, they would win over it).
    s = Store(path, flush_rows=1)
    s.begin_run()
    s.put(failed("x"))
    assert journal_rows(path) == 1
    s.put_many([ok("x", "later"), ok("z")])
    assert journal_rows(path) == 0 and stored_text(path) == {"x": "later", "z": "yes"}
    s.close()


def test_a_write_that_fails_in_python_leaves_no_transaction_open(path: Path) -> None:
    # Text SQLite cannot take (a lone surrogate: `responses.scrubbed` keeps these out) fails while
    # the transaction is open; it must be rolled back, or the next writer waits on a lock for ever.
    s = Store(path)
    s.begin_run()
    s.journal.hold(ok("bad", "half a pair \ud800"))
    assert s.journal.take()
    with pytest.raises(UnicodeEncodeError):
        s.journal.write_taken()
    s.journal.taken_done(False)
    with sqlite3.connect(path, timeout=0.5) as other:  # not locked out
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta VALUES ('written', 'by another connection')")
        other.execute("COMMIT")
    with pytest.raises(UnicodeEncodeError):
        s.close()  # the answer is still held, and still cannot be written; the files are let go
    Store(path).close()
