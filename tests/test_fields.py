"""The answer's fields are written once (`batch.fields`): the record, the store's answers table and
journal, the Arrow rows of the fingerprint and recall files, the output's columns and the report's
usage counts all agree with that table, and the output and recall formats stay what users have."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from batch import fields
from batch.dataset import summary as parts_summary
from batch.fields import ANSWER_COLUMNS, OUTPUT, RECORD, STORED, SUMMED, Field
from batch.job import config
from batch.records import Answer
from batch.report.summary import RunStats, Summary
from batch.store import fingerprints, journal, recall
from batch.store.answers import Store
from batch.tables.sink import OutputWriter

# Every record field set, each to a value no other has: a field that lands in another's place shows.
FULL = Answer(fingerprint="fp", text="the answer", input_tokens=11, output_tokens=12, total_tokens=23,
              reasoning_tokens=4, cached_tokens=5, finish_reason="length", request_id="req_1", model="m",
              latency_s=1.5, queue_time=0.25, total_time=0.75, reasoning="because", attempts=3,
              error="503: busy", permanent=True, rows_in_request=7)
# The output's answer columns, as users have them (the job contract): names and order.
CONTRACT = ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens", "cached_tokens",
            "finish_reason", "error", "attempts", "latency_s", "request_id", "model", "queue_time",
            "total_time", "reasoning", "rows_in_request")
# The recall file's rows as this version writes them, and as the previous one did (without
# rows_in_request): a file from either is read, not ignored.
STR, INT, FLOAT = pa.string(), pa.int64(), pa.float64()
_EARLIER = [("fingerprint", STR), ("text", STR), ("input_tokens", INT), ("output_tokens", INT),
            ("total_tokens", INT), ("reasoning_tokens", INT), ("cached_tokens", INT),
            ("finish_reason", STR), ("request_id", STR), ("model", STR), ("latency_s", FLOAT),
            ("queue_time", FLOAT), ("total_time", FLOAT), ("reasoning", STR), ("attempts", INT),
            ("error", STR), ("permanent", INT)]
RECALL_ROW = pa.struct([*_EARLIER, ("rows_in_request", INT), ("run", INT)])
EARLIER_RECALL_ROW = pa.struct([*_EARLIER, ("run", INT)])


def test_every_record_field_of_the_example_is_set() -> None:
    defaults = Answer(fingerprint="")
    assert all(getattr(FULL, f.name) != getattr(defaults, f.name) for f in RECORD)


def test_the_output_appends_the_fields_marked_for_it_in_their_order(tmp_path: Path) -> None:
    assert ANSWER_COLUMNS == config.ANSWER_COLUMNS == CONTRACT
    inputs = pa.schema([("id", pa.int64())])
    with OutputWriter(tmp_path / "out.parquet", "parquet", inputs, "answer") as out:
        out.write(pa.record_batch([pa.array([1, 2])], schema=inputs), [FULL, "never a request"])
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names == ["id", "answer", *CONTRACT]
    assert [f.type for f in table.schema][1:] == [f.arrow for f in OUTPUT]
    written, failed = table.to_pylist()
    assert written == {"id": 1, "answer": FULL.text, **{n: getattr(FULL, n) for n in CONTRACT}}
    assert failed["error"] == "never a request" and failed["attempts"] == 0


def test_the_store_keeps_every_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    try:
        store.begin_run()
        store.put(FULL)
        assert store.get_many(["fp"])["fp"] == (FULL, False)  # every field, in its place
        rows = store.answer_rows(["fp"])
        assert tuple(f.name for f in STORED) == Store.ANSWER_ROW
        # SQLite holds `permanent` as 0/1
        assert rows == [(*(int(FULL.permanent) if f.name == "permanent" else getattr(FULL, f.name)
                           for f in RECORD), store.run_id)]
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        table = {r[1]: r[2] for r in db.execute("PRAGMA table_info(answers)")}
    assert table == {f.name: f.sqlite.split()[0] for f in STORED}
    assert [f.name for f in RECORD] == journal.COLUMNS
    assert journal.STORED.split(",") == [f.name for f in STORED]


def test_the_arrow_rows_are_the_table_and_the_recall_file_keeps_its_format(tmp_path: Path) -> None:
    assert fingerprints.ROW == pa.struct([(f.name, f.arrow) for f in STORED]) == RECALL_ROW
    assert recall._older(pa.schema([("fingerprint", STR), ("answer", EARLIER_RECALL_ROW)]))
    assert pa.schema([("fingerprint", STR), ("answer", RECALL_ROW)]) == recall.SCHEMA
    # What pass 2 takes from a row: the output's fields, in the store's order, and the run.
    assert list(fingerprints.FIELDS) == [f.name for f in STORED if f.output is not None] + ["run"]
    assert all(fingerprints.FIELDS[f.name] == f.arrow for f in OUTPUT)
    store = Store(tmp_path / "s.sqlite")
    try:
        store.begin_run()
        store.put(FULL)
        row = fingerprints.struct_of(store.answer_rows(["fp"]))  # SQLite's values fit the Arrow types
    finally:
        store.close()
    assert row.to_pylist() == [{**{f.name: getattr(FULL, f.name) for f in RECORD}, "permanent": 1, "run": 1}]


def test_the_report_adds_up_every_usage_count() -> None:
    stats = RunStats()
    stats.record_answer(FULL)
    stats.record_answer(FULL)
    summary = Summary.build(stats, status="complete", model="m", rows=2, rows_ok=0, rows_failed=2,
                            rows_from_store=0, output=None)
    assert SUMMED == ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens")
    assert {name: getattr(stats, name) for name in SUMMED} == {n: 2 * getattr(FULL, n) for n in SUMMED}
    assert {name: getattr(summary, name) for name in SUMMED} == {n: 2 * getattr(FULL, n) for n in SUMMED}
    assert set(SUMMED) <= set(parts_summary._SUMMED)  # a partitioned run adds them up across its parts


def test_the_readme_output_table_names_every_output_column() -> None:
    table = (REPO / "README.md").read_text(encoding="utf-8").split("## The output", 1)[1].split("\n\n")[2]
    assert all(f"`{name}`" in table for name in ANSWER_COLUMNS), table


@dataclasses.dataclass(frozen=True)
class Swapped:  # two attributes in the other order: a stored row would fill each with the other's value
    name: str
    python: int


@pytest.mark.parametrize(("table", "record", "problem"), [
    ((Field("a", str, "TEXT", STR), Field("b", int, "INTEGER", INT)), Swapped, "attributes"),
    ((Field("name", str, "TEXT", STR, output=0), Field("python", int, "INTEGER", INT, output=2)), Swapped,
     "output positions"),
    ((Field("python", int, "INTEGER", INT), Field("name", str, "TEXT", STR),
      Field("late", int, "INTEGER NOT NULL", INT, since=2, record=False)), Swapped, "DEFAULT"),
    ((Field("python", int, "INTEGER", INT), Field("name", str, "TEXT", STR), Field("name", str, "TEXT", STR)),
     Swapped, "twice"),
])
def test_a_table_that_disagrees_is_refused(table: tuple[Field, ...], record: type, problem: str) -> None:
    assert fields.problems() == []
    assert any(problem in p for p in fields.problems(table, record)), fields.problems(table, record)
