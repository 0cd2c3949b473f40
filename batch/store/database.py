"""The store's file on disk: how it is opened (`open_db`, which brings its schema up to date through
`migrations`), who may open it (an exclusive run lock, or a brief opening lock for a store several
processes share), the journal's fold, and the errors of opening and writing it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from batch import fields
from batch.errors import JobError, Stopped
from batch.store import migrations
from batch.store.migrations import SCHEMA_VERSION


class StoreError(JobError):
    """The state file is unusable or busy; the message says what to do."""


class StoreWriteError(Stopped):
    """Answers could not be committed (disk full, file too large, read-only): the run stops (exit 3).
    Every answer committed before is kept, and the uncommitted ones stay buffered, so a later flush
    (after space was freed) or the next run can still save or re-ask them."""

    def __init__(self, path: Path, exc: Exception) -> None:
        super().__init__(f"could not save answers to the state {path} ({exc}); every answer committed "
                         "before is kept. Free space (or make it writable), then run the same command: it "
                         "sends only what has no answer yet.")


def lock_opening(path: Path) -> int:
    """A lock held only while a shared store is opened (waits for another process's opening)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.opening", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def size_bytes(path: Path) -> int:
    """The state on disk: the database and its write-ahead log."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def lock_exclusive(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another run is using {path} right now (lock {path}.lock is held); "
                         "wait for it to finish, or stop it first") from None
    return fd


# The answers' columns, from the answer's fields: for the read-only look's copy of the table.
_COLUMN_ORDER = [f.name for f in fields.STORED]
_COLUMNS_SQL = ", ".join(f"{f.name} {f.sqlite}" for f in fields.STORED)


def open_db(path: Path, *, readonly: bool) -> tuple[sqlite3.Connection, str | None, set[str]]:
    """The connection (created and migrated unless `readonly`), the schema version the file says,
    and the answers table's columns (a read-only look at an older file may lack some)."""
    db: sqlite3.Connection | None = None
    try:
        if readonly:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = None if row is None else str(row[0])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = open_writer(path)
            db.execute("PRAGMA journal_mode=WAL")
            version = _schema_version(db)
            # A file of another format is left as it is: the store refuses it, naming its version.
            if version in (None, str(SCHEMA_VERSION)):
                migrations.migrate(db)
                version = _schema_version(db)
        present = migrations.columns(db, "answers")
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        raise StoreError(f"state file {path} is unreadable ({exc}). Move it aside to start over "
                         "(its answers would then be requested again).") from exc
    return db, version, present


def _schema_version(db: sqlite3.Connection) -> str | None:
    """meta.schema_version; None for a file with no store in it yet."""
    if not migrations.columns(db, "meta"):
        return None
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else str(row[0])


def open_writer(path: Path) -> sqlite3.Connection:
    """A connection that writes (the store's own, or its committing thread's)."""
    # Used by one thread at a time (the store's lock, or the committing thread alone).
    db = sqlite3.connect(path, isolation_level=None, timeout=60.0, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: kill -9 loses nothing committed
    # A fold writes a page of the key for every few answers: copying the log back every 1,000 pages
    # (the default) would rewrite the same pages over and over during one. 10,000 (40 MB of log,
    # removed at close) took a third off the cost of storing 100,000 answers on random pages.
    db.execute("PRAGMA wal_autocheckpoint=10000")
    return db


def fold(db: sqlite3.Connection, known: set[str], into: str = "answers") -> None:
    """Move the journal into the answers (or `into`), in key order: each page of the key written
    once, not once per answer; for a fingerprint journaled twice the later row wins. One transaction
    (the caller's): a crash leaves either the journal or the answers, never neither."""
    journaled = "SELECT columns FROM journal GROUP BY columns ORDER BY MIN(rowid)"
    for (columns,) in db.execute(journaled).fetchall():
        # A journal left by another version may name columns this one lacks: those are dropped.
        kept = [(i, c) for i, c in enumerate(columns.split(",")) if c in known]
        key = next(i for i, c in kept if c == "fingerprint")
        db.execute(f"INSERT OR REPLACE INTO {into} ({','.join(c for _, c in kept)}) "
                   f"SELECT {','.join(f'json_extract(j.value, {_at(i)})' for i, _ in kept)} "
                   "FROM journal, json_each(journal.answers) j WHERE journal.columns = ? "
                   f"ORDER BY json_extract(j.value, {_at(key)}), journal.rowid, j.key", (columns,))


def _at(i: int) -> str:
    return f"'$[{i}]'"


def show_journal(db: sqlite3.Connection, known: set[str]) -> None:
    """For a read-only look while a run writes: `answers` (unqualified) becomes a view of the answers
    with the journal's rows as they were now laid over them (the look cannot fold them itself)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='journal'").fetchone() is None or \
            db.execute("SELECT 1 FROM journal LIMIT 1").fetchone() is None:
        return
    columns = ",".join(c for c in _COLUMN_ORDER if c in known)
    db.execute(f"CREATE TEMP TABLE recent ({_COLUMNS_SQL}) WITHOUT ROWID")
    fold(db, known, into="temp.recent")
    # A temporary object hides a main one of the same name; SQLite takes a look-up by fingerprint
    # into both halves of the view (two key searches, never a scan).
    db.execute(f"CREATE TEMP VIEW answers AS SELECT {columns} FROM main.answers a WHERE NOT EXISTS "
               f"(SELECT 1 FROM temp.recent r WHERE r.fingerprint = a.fingerprint) "
               f"UNION ALL SELECT {columns} FROM temp.recent")


@contextlib.contextmanager
def writing(db: sqlite3.Connection, path: Path) -> Iterator[None]:
    """A write on `db` that fails is rolled back (the connection stays usable); SQLite's refusals are
    raised as StoreWriteError. What was committed before stays committed."""
    try:
        yield
    except BaseException as exc:  # whatever it was, no transaction is left open (it would lock others out)
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise StoreWriteError(path, exc) from exc
        raise
