"""json_schema response formats: typed output columns, checked answers, the simulator's JSON answers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, LocalServer, completion
from nasty import write_csv

from batch.job.schema import Shape, check, shape_of
from batch.sim import Simulator, sim_answer, sim_json_answer

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
StartSim = Callable[..., tuple[str, Simulator]]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "words": {"type": "integer"}, "score": {"type": "number"},
                   "short": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
                   "meta": {"type": "object"}},
    "required": ["title", "words"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "summary", "schema": SCHEMA}}
# The same schema as a TOML inline table, for job files.
FORMAT_TOML = ('{type = "json_schema", name = "summary", schema-file = "schema.json"}')


def shape() -> Shape:
    found = shape_of(FORMAT)
    assert found is not None
    return found


def test_properties_become_typed_columns_in_schema_order() -> None:
    assert shape().properties == (("title", "string"), ("words", "integer"), ("score", "number"),
                                  ("short", "boolean"), ("tags", "json"), ("meta", "json"))
    union = {"type": "json_schema", "json_schema": {"name": "u", "schema": {
        "type": "object", "properties": {"x": {"type": ["string", "null"]}, "y": {}}}}}
    got = shape_of(union)
    assert got is not None and got.properties == (("x", "json"), ("y", "json"))


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


@pytest.mark.parametrize("fmt", [None, {"type": "json_object"}, schema_format({"type": "array"}),
                                 schema_format({"type": "object"})])
def test_no_columns_without_an_object_schema_with_properties(fmt: dict[str, Any] | None) -> None:
    found = shape_of(fmt)  # a json_schema format still checks its answers; it adds no column
    assert found is None if fmt is None or fmt["type"] == "json_object" else found is not None
    assert found is None or found.columns == ()


def test_a_valid_answer_gives_cells() -> None:
    cells, problem = check(shape(), json.dumps({"title": "t", "words": 3.0, "score": 2, "short": True,
                                                "tags": ["a", "é"], "meta": {"k": 1}}, ensure_ascii=False))
    assert problem is None
    assert cells == {"title": "t", "words": 3, "score": 2.0, "short": True, "tags": '["a", "é"]',
                     "meta": '{"k": 1}'}
    cells, problem = check(shape(), '{"title": "t", "words": 1}')
    assert problem is None and cells["score"] is None and cells["tags"] is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"title": "t"}', "'words'"),
    ('{"title": "t", "words": "3"}', "'words' must be integer"),
    ('{"title": "t", "words": true}', "'words' must be integer"),
    ('{"title": "t", "words": 1, "short": 1}', "'short' must be boolean"),
    ('{"title": "t", "words": 1, "extra": 1}', "'extra'"),
    (None, "empty"),
])
def test_a_bad_answer_says_why(text: str | None, fragment: str) -> None:
    cells, problem = check(shape(), text)
    assert cells == {} and problem is not None and fragment in problem, problem


def test_the_simulator_answers_json_that_fits_the_schema() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "response_format": FORMAT}
    answer = json.loads(sim_json_answer(body))
    assert answer == {"title": "hello", "words": 5, "score": 1.25, "short": False, "tags": [], "meta": {}}
    assert check(shape(), sim_json_answer(body))[1] is None
    plain = {"model": "m", "messages": [{"role": "user", "content": "hello"}],
             "response_format": {"type": "json_object"}}
    assert json.loads(sim_json_answer(plain)) == {"model": "m", "prompt": "hello"}
    assert sim_answer(body) == "[m] hello"  # the plain echo is unchanged


def write_schema_job(tmp_path: Path, write_job: WriteJob, **task: Any) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    path = write_job("in.csv", task={"prompt": "${experience}", **task})
    text = path.read_text(encoding="utf-8").replace("[task]\n", f"[task]\nresponse-format = {FORMAT_TOML}\n")
    path.write_text(text, encoding="utf-8")
    return path


ROWS = [{"id": str(i), "name": f"n{i}", "experience": "x" * (i + 1)} for i in range(4)]


def test_a_json_schema_job_writes_typed_columns(tmp_path: Path, simulator: tuple[str, Simulator],
                                                write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = simulator
    write_csv(ROWS, tmp_path / "in.csv")
    proc = run_batch(write_schema_job(tmp_path, write_job), "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names[-7:] == ["rows_in_request", "title", "words", "score", "short", "tags", "meta"]
    schema = table.schema
    assert (schema.field("title").type, schema.field("words").type, schema.field("score").type,
            schema.field("short").type, schema.field("tags").type, schema.field("meta").type) == (
        pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.string(), pa.string())
    assert table.column("words").to_pylist() == [1, 2, 3, 4]
    assert table.column("title").to_pylist() == [r["experience"] for r in ROWS]
    assert table.column("score").to_pylist() == [0.25, 0.5, 0.75, 1.0]
    assert table.column("short").to_pylist() == [False, True, False, True]
    assert table.column("tags").to_pylist() == ["[]"] * 4 and table.column("meta").to_pylist() == ["{}"] * 4
    assert table.column("error").to_pylist() == [None] * 4


class BadJson(LocalServer):
    """A server at /v1 whose answer to a prompt starting with "bad" is not JSON."""

    def __init__(self) -> None:
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        good = json.dumps({"title": prompt, "words": 2})
        text = "Sure! {title: oops" if prompt.startswith("bad") else good
        return completion(text, model=body["model"])


def test_an_invalid_answer_fails_its_row_and_keeps_the_raw_text(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    server = BadJson()
    url = background_loop.run(server.start())
    rows = [{"id": "1", "name": "a", "experience": "good one"},
            {"id": "2", "name": "b", "experience": "bad one"}]
    write_csv(rows, tmp_path / "in.csv")
    try:
        proc = run_batch(write_schema_job(tmp_path, write_job), "--base-url", url)
    finally:
        background_loop.run(server.runner.cleanup())
    assert proc.returncode == 1, proc.stderr
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert table[0]["error"] is None and table[0]["title"] == "good one" and table[0]["words"] == 2
    assert table[1]["text"] == "Sure! {title: oops"
    assert "not valid JSON" in table[1]["error"]
    assert table[1]["title"] is None and table[1]["words"] is None


@pytest.mark.parametrize("clash", ["name", "total_tokens", "text"])
def test_a_property_named_like_a_column_is_refused(tmp_path: Path, simulator: tuple[str, Simulator],
                                                   write_job: WriteJob, run_batch: RunBatch,
                                                   clash: str) -> None:
    url, sim = simulator
    write_csv(ROWS, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": "${experience}"})
    props = f"{{{clash} = {{}}}}"
    fmt = f'{{type = "json_schema", name = "s", schema = {{type = "object", properties = {props}}}}}'
    job.write_text(job.read_text(encoding="utf-8").replace("[task]\n", f"[task]\nresponse-format = {fmt}\n"),
                   encoding="utf-8")
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 2, proc.stderr
    assert repr(clash) in proc.stderr and "response-format" in proc.stderr
    assert list(sim.log) == []


NESTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "who": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "mood": {"enum": ["calm", "angry"]},
        "n": {"type": "integer"}, "x": {"type": "number"},
    },
    "required": ["who"],
}


@pytest.mark.parametrize(("answer", "fragment"), [
    ({"who": {}}, "'who' does not fit the schema: 'name' is a required property"),
    ({"who": {"name": 3}}, "'who.name' must be string, got 3"),
    ({"who": {"name": "a"}, "tags": ["a", 2]}, "'tags[1]' must be string, got 2"),
    ({"who": {"name": "a"}, "mood": "sad"}, "'mood' does not fit the schema: 'sad' is not one of"),
])
def test_the_whole_schema_is_checked(answer: dict[str, Any], fragment: str) -> None:
    nested = shape_of(schema_format(NESTED))
    assert nested is not None
    cells, problem = check(nested, json.dumps(answer))
    assert cells == {} and problem is not None and fragment in problem, problem
    good = {"who": {"name": "a"}, "tags": ["x"], "mood": "calm"}
    assert check(nested, json.dumps(good))[1] is None


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"who": {"name": "a"}, "n": 100000000000000000000000000000}', "'n' is 1000000000000000000000000"),
    ('{"who": {"name": "a"}, "n": -9223372036854775809}', "int64"),
    ('{"who": {"name": "a"}, "x": 1e400}', "'x' is inf, beyond what a number column (float64) holds"),
    ('{"who": {"name": "a"}, "x": 1' + "0" * 400 + '}', "'x' is 1000000000"),
    ('{"who": {"name": "a"}, "tags": NaN}', "not valid JSON"),
    ('{"who": {"name": "a", "big": 1e400}}', "too large for JSON text"),
])
def test_a_value_that_fits_no_column_fails_the_answer(text: str, fragment: str) -> None:
    nested = shape_of(schema_format(NESTED))
    assert nested is not None
    cells, problem = check(nested, text)
    assert cells == {} and problem is not None and fragment in problem, problem
    assert check(nested, '{"who": {"name": "a"}, "n": 9223372036854775807, "x": 1e300}')[1] is None


def test_an_invalid_schema_is_refused_with_the_job(tmp_path: Path, write_job: WriteJob,
                                                    run_batch: RunBatch) -> None:
    write_csv(ROWS, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": "${experience}"})
    fmt = '{type = "json_schema", name = "s", schema = {type = "object", properties = {n = {type = "int"}}}}'
    job.write_text(job.read_text(encoding="utf-8").replace("[task]\n", f"[task]\nresponse-format = {fmt}\n"),
                   encoding="utf-8")
    proc = run_batch(job, "--simulate")
    assert proc.returncode == 2, proc.stderr
    assert "response-format" in proc.stderr and "not a valid JSON Schema" in proc.stderr


class Huge(LocalServer):
    """Answers JSON that parses, fits the schema's types, and fits no int64 column."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        return completion('{"title": "t", "words": 100000000000000000000000000000}')


def test_an_answer_beyond_int64_fails_at_receipt_and_old_stores_heal(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    server = Huge()
    url = background_loop.run(server.start())
    write_csv(ROWS[:2], tmp_path / "in.csv")
    job = write_schema_job(tmp_path, write_job)
    raw = '{"title": "t", "words": 100000000000000000000000000000}'

    def check_output(proc: subprocess.CompletedProcess[str]) -> None:
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr, proc.stderr
        table = pq.read_table(tmp_path / "out.parquet").to_pylist()
        assert [r["text"] for r in table] == [raw, raw], "the raw answer is kept"
        assert all("'words'" in r["error"] and "int64" in r["error"] for r in table), table
        assert [r["words"] for r in table] == [None, None]

    check_output(run_batch(job, "--base-url", url))
    state = tmp_path / "out.parquet.state.sqlite"
    with sqlite3.connect(state) as db:  # judged when it arrived: stored as a failed answer
        assert db.execute("SELECT COUNT(*) FROM answers WHERE error IS NOT NULL AND text = ?",
                          (raw,)).fetchone() == (2,)
        # An earlier version stored such an answer as a good one; pass 2 checks again.
        db.execute("UPDATE answers SET error = NULL, permanent = 0")
    check_output(run_batch(job, "--base-url", url))
    check_output(run_batch(job, "--base-url", url))
    assert server.calls == 2, "an answer was paid for again"


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_a_schema_constraint_below_the_top_level_fails_rows_when_they_arrive(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, mode: str) -> None:
    url, _ = start_sim(batch_validate_s=0.05, batch_finalize_s=0.05)
    write_csv(ROWS, tmp_path / "in.csv")  # the simulator answers words = len(experience): 1, 2, 3, 4
    strict = {**SCHEMA, "properties": {**SCHEMA["properties"], "words": {"type": "integer", "maximum": 2}}}
    (tmp_path / "schema.json").write_text(json.dumps(strict), encoding="utf-8")
    job = write_job("in.csv", task={"prompt": "${experience}"}, run={"mode": mode, "poll-interval": 0.2})
    text = job.read_text(encoding="utf-8").replace("[task]\n", f"[task]\nresponse-format = {FORMAT_TOML}\n")
    job.write_text(text, encoding="utf-8")

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 1, proc.stderr
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["error"] is None for r in table] == [True, True, False, False]
    assert all("'words' does not fit the schema" in r["error"] and "maximum of 2" in r["error"]
               for r in table[2:])
    assert [r["words"] for r in table] == [1, 2, None, None] and table[3]["text"].startswith("{")
    with sqlite3.connect(tmp_path / "out.parquet.state.sqlite") as db:  # judged on arrival, kept failed
        assert db.execute("SELECT COUNT(*) FROM answers WHERE error LIKE '%maximum of 2%' AND permanent = 1"
                          ).fetchone() == (2,)
