"""The store's file on disk: its schema and how it is opened (`open_db`), who may open it (an
exclusive run lock, or a brief opening lock for a store several processes share), and the errors of
opening and writing it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from batch.errors import JobError, Stopped


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


SCHEMA_VERSION = 1
_ADDED_COLUMNS = {"reasoning": "TEXT"}  # since schema 1: added in place when missing
_FIELDS = """text TEXT, input_tokens INTEGER, output_tokens INTEGER,
    total_tokens INTEGER, reasoning_tokens INTEGER, cached_tokens INTEGER, finish_reason TEXT,
    request_id TEXT, model TEXT, latency_s REAL, queue_time REAL, total_time REAL,
    attempts INTEGER NOT NULL, error TEXT, permanent INTEGER NOT NULL, run INTEGER NOT NULL, reasoning TEXT"""
_COLUMN_ORDER = ["fingerprint"] + [f.split()[0] for f in _FIELDS.split(",")]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (fingerprint TEXT PRIMARY KEY, {_FIELDS}) WITHOUT ROWID;
-- Answers as committed, a JSON array of rows a commit, each row the values of `columns` in order.
CREATE TABLE IF NOT EXISTS journal (columns TEXT NOT NULL, answers TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL,
                                 summary TEXT);
CREATE TABLE IF NOT EXISTS run_figures (run INTEGER PRIMARY KEY, summary TEXT NOT NULL,
                                        figures TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


def open_db(path: Path, *, readonly: bool) -> tuple[sqlite3.Connection, str | None, set[str]]:
    """The connection (created with the schema unless `readonly`), the schema version the file says,
    and the answers table's columns (a column added since is added here, unless `readonly`)."""
    try:
        if readonly:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Used by one thread at a time (the store's lock): the loop's, a committing one, pass 2's.
            db = open_writer(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        present = {r[1] for r in db.execute("PRAGMA table_info(answers)")}
        if not readonly:
            for name, sql_type in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE answers ADD COLUMN {name} {sql_type}")
                    present.add(name)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"state file {path} is unreadable ({exc}). Move it aside to start over "
                         "(its answers would then be requested again).") from exc
    return db, None if row is None else str(row[0]), present


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
    db.execute(f"CREATE TEMP TABLE recent (fingerprint TEXT PRIMARY KEY, {_FIELDS}) WITHOUT ROWID")
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
