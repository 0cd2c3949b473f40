"""The answers a run has received and its store's answers table does not hold yet (the journal table,
folded into the answers by `storefile`).

An answer is buffered, handed to a committing thread (`take`, `write_taken`: a group commit, off the
event loop) and appended to the journal table: one row a commit, holding the commit's answers as one
JSON array, so that SQLite takes the interpreter lock back once a commit rather than once an answer
(each time from the loop's thread, which holds it meanwhile). Every `FOLD_ROWS` answers, before the
answers are read and at close, the journal is folded into the answers in key order, in one statement
that runs without the interpreter lock. An answer committed straight into the key would land on a
random page of it (a page written per answer: most of the cost of storing against a fast server);
a fold writes each page once.

Until it is folded, an answer counts as stored (`holds`): pass 1 must not send it again. A store
that several processes share commits into the answers directly, so each sees the others' answers.
"""

from __future__ import annotations

import contextlib
import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from batch import fields
from batch.records import Answer
from batch.store import database as storefile

COLUMNS = [f.name for f in fields.RECORD]  # an Answer's attributes, in order
STORED = ",".join(f.name for f in fields.STORED)  # a journal row: an Answer's values, then the store's own
# dataclasses.astuple deep-copies every field: ten times slower than reading them, on every answer.
_values = operator.attrgetter(*COLUMNS)
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one encoder for every commit
FOLD_ROWS = 10_000  # journal rows that make the committing thread fold (bounds `_journaled` too)


class Journal:
    def __init__(self, path: Path, db: sqlite3.Connection, lock: threading.Lock, known: set[str], *,
                 direct: bool, flush_rows: int, flush_s: float) -> None:
        self._path, self._db, self._lock, self._known = path, db, lock, known
        self._direct = direct  # a shared store: straight into the answers
        self._flush_rows, self._flush_s = flush_rows, flush_s
        self._last_flush = time.monotonic()
        self.run_id = 0
        self._buffer: dict[str, Answer] = {}
        self._taken: dict[str, Answer] = {}  # handed to a committing thread (`take`), not yet confirmed
        self._journaled: set[str] = set()  # committed to the journal since the last fold
        self._rows, self._folded = 0, False
        self._writer: sqlite3.Connection | None = None  # the committing thread's own connection
        # Also done in each commit's transaction, with its fingerprints (`claims`: ends their claims).
        self.on_write: Callable[[sqlite3.Connection, Sequence[str]], None] | None = None

    def holds(self, fingerprint: str) -> bool:
        """Received by this run and not folded yet: stored, but not in the answers table."""
        return fingerprint in self._buffer or fingerprint in self._taken or fingerprint in self._journaled

    def put(self, answer: Answer) -> None:
        self._buffer[answer.fingerprint] = answer
        if len(self._buffer) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_s:
            self.flush()

    def put_many(self, answers: Iterable[Answer]) -> None:
        """Many answers (a Batch API result file) in one transaction, straight into the answers in key
        order: already a bulk write, and through the journal it would leave its size in free pages."""
        for answer in answers:
            self._buffer[answer.fingerprint] = answer
        self._untake()
        self.fold()  # the journal's answers are older: folded after these, they would win
        self._write(self._buffer, self._db, direct=True)
        self._buffer.clear()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        self._untake()  # a commit that never reported back (cancelled) is written again, harmlessly
        if self._buffer:
            self._write(self._buffer, self._db)  # on failure the buffer is kept: nothing is dropped
            if not self._direct:
                self._journaled.update(self._buffer)
            self._buffer.clear()
            if self._rows >= FOLD_ROWS:
                self.fold()

    # Group commit (`online.Committer`): taken answers count as stored from the start.
    def hold(self, answer: Answer) -> None:
        self._buffer[answer.fingerprint] = answer

    def take(self) -> int:
        """Hand the buffered answers (with any a cancelled commit left) to `write_taken`; how many."""
        self._untake()
        self._taken, self._buffer = self._buffer, {}
        return len(self._taken)

    def write_taken(self) -> None:
        """Commit the taken answers, in the committing thread, on a connection of its own (a fold
        there never holds up the loop's look-ups); raises StoreWriteError."""
        if self._writer is None:
            self._writer = storefile.open_writer(self._path)
        self._write(self._taken, self._writer)
        if self._rows >= FOLD_ROWS:
            self.fold(self._writer)
            self._folded = True

    def taken_done(self, ok: bool) -> None:
        if ok:
            if self._folded:  # the thread folded them in: the answers table has them now
                self._journaled.clear()
                self._folded = False
            elif not self._direct:
                self._journaled.update(self._taken)
            self._taken = {}
        self._untake()  # a failed commit's answers are kept, newer ones winning, for the next try

    def _untake(self) -> None:
        if self._taken:
            self._buffer, self._taken = {**self._taken, **self._buffer}, {}

    def _write(self, answers: dict[str, Answer], db: sqlite3.Connection, *, direct: bool = False) -> None:
        direct = direct or self._direct
        rows = [(*_values(a), self.run_id) for a in answers.values()]  # `run`: the store's only own field
        with self._transaction(db):
            if direct:  # in key order: each page of the key written once per transaction
                db.executemany(f"INSERT OR REPLACE INTO answers ({STORED}) "
                               f"VALUES ({','.join('?' * len(fields.STORED))})", sorted(rows))
            else:
                db.execute("INSERT INTO journal VALUES (?, ?)", (STORED, _JSON.encode(rows)))
            if self.on_write is not None:
                self.on_write(db, list(answers))
        self._rows += 0 if direct else len(rows)

    def fold(self, db: sqlite3.Connection | None = None) -> None:
        """Move the journal (this run's, or one a crashed run left) into the answers."""
        db = db or self._db
        with self._using(db):
            left = self._rows or db.execute("SELECT 1 FROM journal LIMIT 1").fetchone()
        if left:
            with self._transaction(db):
                storefile.fold(db, self._known)
                db.execute("DELETE FROM journal")
        self._rows = 0
        if db is self._db:
            self._journaled.clear()

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        with self._using(db), storefile.writing(db, self._path):
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock with a writer
            yield
            db.execute("COMMIT")

    def _using(self, db: sqlite3.Connection) -> contextlib.AbstractContextManager[object]:
        # The store's connection has one user at a time (its lock); the writer is the thread's own.
        return contextlib.nullcontext() if db is self._writer else self._lock

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
