"""The store's one list of migrations (`batch.store.migrations`): a new store gets every table through
it, a state file written before migrations were counted opens, migrates and resumes, a second
migration is a no-op, and a migration that fails leaves the file as it was. Real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from nasty import write_csv
from test_e2e import PROMPT, RunBatch, StartSim, WriteJob, chat_log, plain_rows

from batch import fields
from batch.records import Answer
from batch.store import migrations
from batch.store.answers import Store
from batch.store.database import StoreError
from batch.store.ledger import Ledger
from batch.store.migrations import MIGRATIONS, Migration, migrate

# The schema the store and its ledger wrote before migrations were counted (user_version 0), as that
# version spelled it: every table made with IF NOT EXISTS, `reasoning` and `times` already in place.
PREVIOUS = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (fingerprint TEXT PRIMARY KEY, text TEXT, input_tokens INTEGER,
    output_tokens INTEGER, total_tokens INTEGER, reasoning_tokens INTEGER, cached_tokens INTEGER,
    finish_reason TEXT, request_id TEXT, model TEXT, latency_s REAL, queue_time REAL, total_time REAL,
    attempts INTEGER NOT NULL, error TEXT, permanent INTEGER NOT NULL, run INTEGER NOT NULL,
    reasoning TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (columns TEXT NOT NULL, answers TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL,
                                 summary TEXT);
CREATE TABLE IF NOT EXISTS run_figures (run INTEGER PRIMARY KEY, summary TEXT NOT NULL,
                                        figures TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1');
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, lines INTEGER NOT NULL, bytes INTEGER NOT NULL,
    file_id TEXT, batch_id TEXT, status TEXT NOT NULL, counts TEXT, detail TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0, times TEXT
);
CREATE TABLE IF NOT EXISTS upload_lines (
    upload INTEGER NOT NULL, line INTEGER NOT NULL, fingerprint TEXT NOT NULL, PRIMARY KEY (upload, line)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_lines_fp ON upload_lines (fingerprint);
"""
# The first store: three tables, no `reasoning`, no journal, no ledger, no run figures.
FIRST = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE answers (fingerprint TEXT PRIMARY KEY, text TEXT, input_tokens INTEGER,
    output_tokens INTEGER, total_tokens INTEGER, reasoning_tokens INTEGER, cached_tokens INTEGER,
    finish_reason TEXT, request_id TEXT, model TEXT, latency_s REAL, queue_time REAL,
    total_time REAL, attempts INTEGER NOT NULL, error TEXT, permanent INTEGER NOT NULL,
    run INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, summary TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
"""
TABLES = {"meta", "answers", "journal", "runs", "run_figures", "uploads", "upload_lines"}


def schema(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, key) and every index, by name."""
    with sqlite3.connect(path) as db:
        names = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        return {name: db.execute(f"PRAGMA table_xinfo({name})").fetchall() if kind == "table"
                else db.execute(f"PRAGMA index_xinfo({name})").fetchall() for kind, name in names}


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def made(path: Path, sql: str, *more: str) -> Path:
    db = sqlite3.connect(path)
    db.executescript(sql)
    for statement in more:
        db.execute(statement)
    db.commit()
    db.close()
    return path


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    path = tmp_path / "fresh.sqlite"
    Store(path).close()
    return path


def test_a_new_store_has_every_table_through_the_migrations(fresh: Path) -> None:
    assert schema(fresh).keys() >= {*TABLES, "upload_lines_fp"}
    assert user_version(fresh) == len(MIGRATIONS)
    assert [m.number for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    # The answers table is the answer's fields in the table's order, a later one appended by its migration.
    with sqlite3.connect(fresh) as db:
        columns = [(r[1], r[2], bool(r[3]), bool(r[5])) for r in db.execute("PRAGMA table_info(answers)")]
    expected = sorted(fields.STORED, key=lambda f: f.since)  # stable: each migration's in table order
    # (WITHOUT ROWID: the primary key is NOT NULL too)
    assert columns == [(f.name, f.sqlite.split()[0], "NOT NULL" in f.sqlite or "PRIMARY KEY" in f.sqlite,
                        "PRIMARY KEY" in f.sqlite) for f in expected]


def test_a_state_file_of_the_previous_version_opens_migrates_and_resumes(tmp_path: Path, fresh: Path) -> None:
    path = made(tmp_path / "previous.sqlite", PREVIOUS,
                "INSERT INTO runs (id, started, finished, summary) VALUES (1, 1.0, 2.0, '{\"rows\": 3}')",
                "INSERT INTO answers (fingerprint, text, input_tokens, attempts, permanent, run, reasoning) "
                "VALUES ('fp-old', 'kept', 7, 1, 0, 1, 'why')",
                "INSERT INTO answers (fingerprint, error, attempts, permanent, run) "
                "VALUES ('fp-bad', '400 too long', 1, 1, 1)",
                "INSERT INTO uploads (name, lines, bytes, status, created, updated) "
                "VALUES ('b-1-x.jsonl', 1, 10, 'submitted', 1.0, 1.0)",
                "INSERT INTO upload_lines VALUES (1, 1, 'fp-held')")
    # A crashed run left a commit in the journal, in that version's columns.
    names = ["fingerprint", "text", "attempts", "permanent", "run"]
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO journal VALUES (?, ?)",
                   (",".join(names), json.dumps([["fp-crash", "late", 1, 0, 1]])))
    assert user_version(path) == 0

    store = Store(path)
    try:
        store.begin_run()
        got = store.get_many(["fp-old", "fp-bad", "fp-crash"])
        assert got["fp-old"][0] == Answer(fingerprint="fp-old", text="kept", input_tokens=7, attempts=1,
                                         reasoning="why")
        assert got["fp-crash"][0].text == "late" and got["fp-bad"][0].permanent
        assert store.missing(["fp-old", "fp-bad", "fp-crash", "fp-new"]) == {"fp-new"}  # resumes
        assert Ledger(store).held(["fp-held", "fp-old"]) == {"fp-held"}
        assert store.begin_run() == 3  # after the previous version's run and this one's first
    finally:
        store.close()
    assert user_version(path) == len(MIGRATIONS)
    assert schema(path) == schema(fresh)


def test_the_first_store_reaches_the_same_schema(tmp_path: Path, fresh: Path) -> None:
    path = made(tmp_path / "first.sqlite", FIRST,
                "INSERT INTO answers (fingerprint, text, attempts, permanent, run) "
                "VALUES ('fp', 't', 1, 0, 1)")
    store = Store(path)
    try:
        assert [(a.fingerprint, a.text, a.reasoning) for a in store] == [("fp", "t", None)]
        assert Ledger(store).timelines() == []
    finally:
        store.close()
    assert schema(path) == schema(fresh)


def test_migrating_twice_is_a_no_op(fresh: Path) -> None:
    before = schema(fresh)
    db = sqlite3.connect(fresh, isolation_level=None)
    try:
        assert migrate(db) == []
        # Each migration a file from before user_version may already hold changes nothing when run again.
        for m in MIGRATIONS[:migrations.BASELINE]:
            if callable(m.apply):
                m.apply(db)
            else:
                for statement in m.apply:
                    db.execute(statement)
        assert db.execute("SELECT value FROM meta").fetchall() == [("1",)]
    finally:
        db.close()
    Store(fresh).close()
    assert schema(fresh) == before and user_version(fresh) == len(MIGRATIONS)


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path, fresh: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = made(tmp_path / "previous.sqlite", PREVIOUS)
    before = schema(path)
    broken = Migration(len(MIGRATIONS) + 1, "broken", ("CREATE TABLE half (a)", "NOT SQL"))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError):
        Store(path)
    assert user_version(path) == 0 and schema(path) == before  # neither `half` nor the earlier ones
    monkeypatch.undo()
    Store(path).close()
    assert schema(path) == schema(fresh)


def test_a_file_a_newer_version_migrated_further_is_used_as_it_is(fresh: Path) -> None:
    later = len(MIGRATIONS) + 2
    made(fresh, "ALTER TABLE answers ADD COLUMN newer TEXT; CREATE TABLE newer (a);",
         f"PRAGMA user_version = {later}")
    store = Store(fresh)
    try:
        store.begin_run()
        store.put(Answer(fingerprint="fp", text="t", attempts=1))
        assert store.get_many(["fp"])["fp"][0].text == "t"
    finally:
        store.close()
    assert user_version(fresh) == later


def test_a_store_of_another_format_is_not_migrated(tmp_path: Path) -> None:
    path = made(tmp_path / "other.sqlite", FIRST, "UPDATE meta SET value='2'")
    before = schema(path)
    with pytest.raises(StoreError, match="schema 2"):
        Store(path)
    assert schema(path) == before and user_version(path) == 0


def test_each_later_field_is_its_own_migration() -> None:
    def later(n: int) -> list[str]:
        return [f.name for f in fields.STORED if f.since == n]

    assert later(2) == ["reasoning"]
    for n in {f.since for f in fields.STORED} - {1}:
        assert all(name in MIGRATIONS[n - 1].what for name in later(n)), MIGRATIONS[n - 1]


def test_a_run_resumes_from_a_state_file_of_the_previous_version(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    """The previous version wrote the same tables, without counting migrations: such a file is this
    version's with user_version 0 (and no ledger, for a run that never used the Batch API)."""
    url, sim = start_sim()
    write_csv(plain_rows(5), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    state = tmp_path / "out.parquet.state.sqlite"
    made(state, "DROP TABLE upload_lines; DROP TABLE uploads;", "PRAGMA user_version = 0")
    Path(f"{state}.recall").unlink()  # every row is looked up in the store
    again = run_batch(job, "--base-url", url)
    assert again.returncode == 0, again.stderr
    assert len(chat_log(sim)) == 5, "nothing is sent twice"
    assert user_version(state) == len(MIGRATIONS) and schema(state).keys() >= TABLES
