"""Every table the store keeps, as one ordered list of migrations (`MIGRATIONS`), and how a file is
brought up to date (`migrate`).

A migration is a number and either SQL statements or a function of the connection. The file records
how many it has had in `PRAGMA user_version` (a field of SQLite's own header, so no table is needed to
find out); opening a store for writing applies the ones it has not had, in order, in one transaction
(a crash leaves the file as it was, or with all of them). The answers table's columns come from the
answer's fields (`batch.fields`): the first migration creates those of `since = 1`, and a field with a
later `since` is that migration's column, added by `_answers_gain` (so adding a field to the table is
its migration too).

Files written before migrations were counted say 0, whatever they hold: their tables were created
with IF NOT EXISTS and their later columns added when missing. So each migration up to `BASELINE`
does the same (creates only what is missing, adds a column only when absent), and such a file
reaches the same schema as a new one. A later migration runs on files that say exactly what they
have, and may be plain SQL.

`meta.schema_version` is another thing: the store's format, which every version reads before using a
file, and which only a change that older versions could not read (a column they would fail to write,
a table changed in place) raises. A file a newer version migrated further (a higher user_version)
is used as it is: its additions are nullable columns and tables this version does not name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from batch import fields

SCHEMA_VERSION = 1  # meta.schema_version: the format every version of the store reads


@dataclass(frozen=True, slots=True)
class Migration:
    number: int  # its place in the list, from 1; the file's user_version once applied
    what: str
    apply: tuple[str, ...] | Callable[[sqlite3.Connection], None]  # statements, or a function


def _answers_columns(since: int) -> str:
    return ", ".join(f"{f.name} {f.sqlite}" for f in fields.STORED if f.since == since)


def _answers_gain(since: int) -> Callable[[sqlite3.Connection], None]:
    """The answer's fields of migration `since`, added to the answers table (those it lacks)."""
    def add(db: sqlite3.Connection) -> None:
        for f in fields.STORED:
            if f.since == since and f.name not in columns(db, "answers"):
                db.execute(f"ALTER TABLE answers ADD COLUMN {f.name} {f.sqlite}")
    return add


def _add_column(table: str, name: str, sql_type: str) -> Callable[[sqlite3.Connection], None]:
    def add(db: sqlite3.Connection) -> None:
        if name not in columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
    return add


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The table's column names (none if it does not exist)."""
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


# The history of the store's file, oldest first. Never edit one that has shipped: add the next one.
_WRITTEN: tuple[Migration, ...] = (
    Migration(1, "the store: meta, answers (the fields of since = 1), runs", (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS answers ({_answers_columns(1)}) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, "
        "summary TEXT)",
        f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}')",
    )),
    # 2: the fields of since = 2 (`_answers_gain`)
    Migration(3, "the Batch API's ledger: its submissions and which request is on which line", (
        "CREATE TABLE IF NOT EXISTS uploads (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "lines INTEGER NOT NULL, bytes INTEGER NOT NULL, file_id TEXT, batch_id TEXT, status TEXT NOT NULL, "
        "counts TEXT, detail TEXT, created REAL NOT NULL, updated REAL NOT NULL, "
        "done INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS upload_lines (upload INTEGER NOT NULL, line INTEGER NOT NULL, "
        "fingerprint TEXT NOT NULL, PRIMARY KEY (upload, line)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS upload_lines_fp ON upload_lines (fingerprint)",
    )),
    Migration(4, "the figures each run's report plots", (
        "CREATE TABLE IF NOT EXISTS run_figures (run INTEGER PRIMARY KEY, summary TEXT NOT NULL, "
        "figures TEXT NOT NULL)",
    )),
    Migration(5, "when each batch reached each status (uploads.times)",
              _add_column("uploads", "times", "TEXT")),
    # Answers as committed, a JSON array of rows a commit, each row the values of `columns` in order.
    Migration(6, "the journal of commits not yet folded into the answers", (
        "CREATE TABLE IF NOT EXISTS journal (columns TEXT NOT NULL, answers TEXT NOT NULL)",
    )),
    # A request in flight, by the call sending it, for calls sharing the store to wait on (`claims`).
    Migration(7, "claims on requests in flight", (
        "CREATE TABLE IF NOT EXISTS claims (fingerprint TEXT PRIMARY KEY, run INTEGER NOT NULL, "
        "owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    )),
    # 8: the fields of since = 8 (rows_in_request)
    # A Batch API line that carries a pack (rows-per-request): its rows, each with its id in the pack
    # and its item's tokens, and the pack's shared tokens (`store.packlines`).
    Migration(9, "the rows of each Batch API line that carries a pack", (
        "CREATE TABLE IF NOT EXISTS upload_packs (upload INTEGER NOT NULL, custom_id TEXT NOT NULL, "
        "member TEXT NOT NULL, item TEXT NOT NULL, tokens INTEGER NOT NULL, shared INTEGER NOT NULL, "
        "text_job INTEGER NOT NULL, PRIMARY KEY (upload, custom_id, member)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS upload_packs_member ON upload_packs (member)",
    )),
)
BASELINE = 6  # the migrations files from before user_version may hold without saying so

MIGRATIONS: tuple[Migration, ...] = tuple(sorted(
    (*_WRITTEN, *(Migration(n, f"answers gain {', '.join(f.name for f in fields.STORED if f.since == n)}",
                            _answers_gain(n)) for n in sorted({f.since for f in fields.STORED} - {1}))),
    key=lambda m: m.number))
if [m.number for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    # Two migrations with one number (a field's `since` taken by a written one), or a gap.
    raise TypeError(f"store migrations must be numbered 1..N once each: {[m.number for m in MIGRATIONS]}")


def version(db: sqlite3.Connection) -> int:
    """How many migrations the file has had."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> list[int]:
    """Apply the migrations the file has not had, in order, in one transaction; the numbers applied.
    `db` is in autocommit mode (isolation_level None) and outside a transaction."""
    if version(db) >= len(MIGRATIONS):  # the usual open: no write, no lock
        return []
    db.execute("BEGIN IMMEDIATE")  # the write lock first: another process may be migrating it too
    try:
        pending = MIGRATIONS[version(db):]
        for m in pending:
            if callable(m.apply):
                m.apply(db)
            else:
                for statement in m.apply:
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return [m.number for m in pending]
