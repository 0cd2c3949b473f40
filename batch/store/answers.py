"""The store (with `storefile`, which opens it, `migrations`, which makes its tables, and `journal`,
which writes it): one answer per request fingerprint, beside the output.

The store is the run's record (a crashed run resumes from it), its cache (an unchanged row is never
paid for twice) and the place the output is assembled from. Answers are buffered and committed in
small transactions: an online run hands what arrived to a worker thread that commits it, one
transaction at a time (answers that arrive meanwhile go into the next: a group commit, off the event
loop: `engine.commits`, which spaces busy transactions 50 ms apart); `put` commits by itself every
`flush_rows` answers, every `flush_s` seconds and at close. So a `kill -9` loses no answer that was
received, only requests still on the wire (and the answers of the transaction being written, or, at
a pace of thousands a second, of the last 50 ms). WAL mode lets a reader (`status`) look while a run
writes; an exclusive lock file keeps a second run of the same state away (it would pay for the same
rows).

Commits go to a journal first, folded into the answers in key order (see `journal`); the answers are
read only after a fold, and a read-only look sees the journal laid over them.

The answers table's columns are the answer's fields (`batch.fields`); a store from an older version
gains the later ones when it is opened for a run (`migrations`), and a read-only look at one reads
those as NULL, so a store keeps working across versions. Writes and reads name their columns, never
rely on the table's order.

A failed answer is kept with `permanent`: the next run re-sends a transient one (retries exhausted),
not a permanent one (400, 413, bad input). A good answer is never sent again, so never replaced (`recall`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batch import fields
from batch.records import Answer
from batch.store import database as storefile
from batch.store.database import StoreError, StoreWriteError, lock_exclusive, lock_opening, open_db
from batch.store.journal import Journal
from batch.store.migrations import SCHEMA_VERSION

RUN_TOKEN = "run-token:"  # meta key prefix: run-token:<store run id> -> the door's run token


class Store:
    def __init__(self, path: Path, *, flush_rows: int = 500, flush_s: float = 1.0,
                 readonly: bool = False, shared: bool = False) -> None:
        """Open (creating if needed) and lock the store; `readonly` neither creates nor locks, so a
        reader can look while a run writes; `shared` does not lock either, for a cache that several
        processes fill at once (SQLite serialises their writes; each waits its turn)."""
        self.path, self.readonly, self.shared = path, readonly, shared
        # One user of the connection at a time: the event loop's thread, or pass 2's.
        self._lock = threading.Lock()
        self.run_id = 0
        self._lock_fd = -1 if readonly or shared else lock_exclusive(path)
        # Processes sharing a store open it one at a time: switching a new file to WAL is refused
        # (SQLITE_BUSY, no busy wait) while another connection holds it.
        opening = lock_opening(path) if shared else -1
        try:
            self._db, version, present = open_db(path, readonly=readonly)
        except StoreError:
            self._release()
            raise
        finally:
            if opening >= 0:
                os.close(opening)  # closing the descriptor releases its lock
        self.journal = Journal(path, self._db, self._lock, present, direct=shared, flush_rows=flush_rows,
                               flush_s=flush_s)
        # A read-only look at an older store reads a column it lacks as NULL.
        self._select = ",".join(c if c in present else f"NULL AS {c}" for c in _RECORD)
        self._select_a = ",".join(f"a.{c}" if c in present else f"NULL AS {c}" for c in self.ANSWER_ROW)
        if version != str(SCHEMA_VERSION):
            self._db.close()
            self._release()
            raise StoreError(f"state file {path} was written by another version of batch "
                             f"(schema {version or '?'}, this one reads {SCHEMA_VERSION}). "
                             "Move it aside to start over, or use the version that wrote it.")
        try:
            if readonly:
                storefile.show_journal(self._db, present)
            else:
                self.journal.fold()  # a journal a crashed run left: the look-ups below must see it
        except (sqlite3.Error, StoreWriteError):
            self._db.close()
            self._release()
            raise

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the Batch API's ledger, whose two tables live in the same file."""
        return self._db

    # -- runs -------------------------------------------------------------------------------------
    def begin_run(self, token: str | None = None) -> int:
        """A new run of this store. `token` names the run a door sees when it is made of several store
        runs (a partition done again after its worker was lost): `runlog.bought_by` finds them."""
        with self.writing():
            cur = self._db.execute("INSERT INTO runs (started) VALUES (?)", (time.time(),))
            if token:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (f"{RUN_TOKEN}{cur.lastrowid}", token))
        self.run_id = self.journal.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def finish_run(self, summary_json: str) -> None:
        self.flush()
        with self.writing():
            self._db.execute("UPDATE runs SET finished=?, summary=? WHERE id=?",
                             (time.time(), summary_json, self.run_id))

    def writing(self, db: sqlite3.Connection | None = None) -> contextlib.AbstractContextManager[None]:
        """A write that fails (disk full, file too large, read-only) is rolled back, so the connection
        stays usable, and raised as StoreWriteError; what was committed before stays committed."""
        return storefile.writing(db or self._db, self.path)

    # -- answers ----------------------------------------------------------------------------------
    def put(self, answer: Answer) -> None:
        self.journal.put(answer)

    def put_many(self, answers: Iterable[Answer]) -> None:
        self.journal.put_many(answers)

    def flush(self) -> None:
        self.journal.flush()

    def _settle(self) -> None:
        """Before the answers are read: everything received is in them."""
        self.journal.flush()
        if not self.readonly:
            self.journal.fold()

    def missing(self, fingerprints: Iterable[str], *, retry_failed: bool = False) -> set[str]:
        """The fingerprints with no usable answer: never asked, or failed transiently in an earlier
        run (or permanently, with `retry_failed`). A failure from this run counts as answered."""
        todo = self._unbuffered(fingerprints)
        if not todo:
            return set()
        # One query: the fingerprints go as one JSON array, and only the missing ones come back.
        q = ("SELECT j.value FROM json_each(?) j WHERE NOT EXISTS (SELECT 1 FROM answers a "
             f"WHERE a.fingerprint = j.value AND ({answered_sql(retry_failed)}))")
        with self._lock:
            return {r[0] for r in self._db.execute(q, (json.dumps(todo), self.run_id))}

    def lookup(self, fingerprints: Iterable[str], *,
               retry_failed: bool = False) -> tuple[set[str], dict[str, tuple[Any, ...]]]:
        """`missing`, and the others' stored answers (fields `ANSWER_ROW`) for pass 1 to keep."""
        missing, done, _ = self.sort_out(fingerprints, retry_failed=retry_failed)
        return missing, done

    def sort_out(self, fingerprints: Iterable[str], *, retry_failed: bool = False) -> tuple[
            set[str], dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
        """`lookup`, and the stored answers of the missing ones that have one (a transient failure, a
        pack's row left to go again), from the same query: for pass 1 to go on from, without a
        second read (which would fold the journal first, on the loop's thread)."""
        todo = self._unbuffered(fingerprints)
        if not todo:
            return set(), {}, {}
        q = (f"SELECT {self._select_a}, ({answered_sql(retry_failed)}) FROM json_each(?) j "
             "JOIN answers a ON a.fingerprint = j.value")
        done: dict[str, tuple[Any, ...]] = {}
        left: dict[str, tuple[Any, ...]] = {}
        with self._lock:
            for r in self._db.execute(q, (self.run_id, json.dumps(todo))):
                (done if r[-1] else left)[r[0]] = r[:-1]
        return set(todo) - done.keys(), done, left

    def _unbuffered(self, fingerprints: Iterable[str]) -> list[str]:
        # Sorted: consecutive lookups then walk the primary key's pages in order (fewer page reads).
        return sorted(fp for fp in set(fingerprints) if not self.journal.holds(fp))

    def get_many(self, fingerprints: Iterable[str]) -> dict[str, tuple[Answer, bool]]:
        """fingerprint -> (answer, whether an earlier run stored it)."""
        return {r[0]: (stored_answer(r), r[_RUN] != self.run_id) for r in self.answer_rows(fingerprints)}

    ANSWER_ROW = tuple(f.name for f in fields.STORED)  # the fields of `answer_rows`' tuples

    def answer_rows(self, fingerprints: Iterable[str]) -> list[tuple[Any, ...]]:
        """The stored answers of these fingerprints as plain tuples (fields `ANSWER_ROW`), in one query:
        what the output is assembled from, column-wise, without an object per row."""
        self._settle()
        todo = sorted(set(fingerprints))  # in key order, as in `missing`
        q = f"SELECT {self._select_a} FROM json_each(?) j JOIN answers a ON a.fingerprint = j.value"
        with self._lock:
            return self._db.execute(q, (json.dumps(todo),)).fetchall() if todo else []

    def counts(self) -> dict[str, int]:
        self._settle()
        row = self._db.execute(
            "SELECT COUNT(*), SUM(error IS NULL), SUM(error IS NOT NULL AND permanent = 1), "
            "SUM(error IS NOT NULL AND permanent = 0) FROM answers").fetchone()
        return {"answers": row[0] or 0, "ok": row[1] or 0, "failed_permanent": row[2] or 0,
                "failed_retryable": row[3] or 0}

    def meta(self, key: str, default: str) -> str:
        """A value kept with the store, set to `default` the first time it is asked for."""
        q = "SELECT value FROM meta WHERE key=?"
        with self._lock:
            if (row := self._db.execute(q, (key,)).fetchone()) is None:  # OR IGNORE: another process's
                self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
                row = self._db.execute(q, (key,)).fetchone()
        return str(row[0])

    def close(self) -> None:
        try:
            self._settle()
        finally:
            self.journal.close()
            self._db.close()
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __iter__(self) -> Iterator[Answer]:  # for tools and tests: every stored answer
        self._settle()
        for r in self._db.execute(f"SELECT {self._select} FROM answers"):
            yield stored_answer(r)


_RECORD = [f.name for f in fields.RECORD]
_RUN = Store.ANSWER_ROW.index("run")
_BOOLS = [i for i, f in enumerate(fields.RECORD) if f.python is bool]  # SQLite hands them back as 0/1


def answered_sql(retry_failed: bool) -> str:
    """SQL: a stored row needs no sending (`?`: this run's id); a failure of this run counts."""
    return "error IS NULL OR run = ?" + ("" if retry_failed else " OR permanent = 1")


def stored_answer(row: tuple[Any, ...]) -> Answer:
    """An Answer from a row whose leading values are its attributes (`_RECORD`; the store's own may
    follow). Positional, in the record's order (checked by `batch.fields`): no dict per row on the
    output's path."""
    values = list(row[:len(_RECORD)])
    for i in _BOOLS:
        values[i] = bool(values[i])
    return Answer(*values)
