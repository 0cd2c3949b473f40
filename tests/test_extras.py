"""Groq's extras in [task]: stop, reasoning, service tier, response format; and the `reasoning` column."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, LocalServer, completion
from nasty import write_csv

from batch.errors import ConfigError
from batch.job.config import TaskSpec, parse_job
from batch.records import Answer
from batch.render.prompts import Renderer
from batch.store.answers import Store

QWEN = "qwen/qwen3.8-27b"  # a model that takes reasoning_format (the gpt-oss models do not)
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]

HEAD = """
[input]
path = "rows.csv"

[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise: ${text}"
"""


def job(extra: str, tmp_path: Path) -> TaskSpec:
    return parse_job(HEAD + extra, tmp_path / "job.toml").task


def problems(extra: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job(HEAD + extra, tmp_path / "job.toml")
    return str(info.value)


def body(task: TaskSpec) -> dict[str, Any]:
    req = Renderer(task).request(0, {"text": "x"})
    parsed: dict[str, Any] = json.loads(req.body)
    return parsed


def test_extras_are_sent_in_a_fixed_order_and_unset_ones_are_not(tmp_path: Path) -> None:
    extras = ('stop = ["END", "\\n\\n"]\nreasoning-effort = "low"\nreasoning-format = "parsed"\n'
              'service-tier = "flex"\nresponse-format = {type = "json_object"}\ntemperature = 0\n')
    t = parse_job(HEAD.replace("openai/gpt-oss-20b", QWEN) + extras, tmp_path / "job.toml").task
    sent = body(t)
    assert list(sent) == ["model", "messages", "temperature", "stop", "reasoning_effort", "reasoning_format",
                          "service_tier", "response_format"]
    assert sent["stop"] == ["END", "\n\n"] and sent["reasoning_effort"] == "low"
    assert sent["reasoning_format"] == "parsed" and sent["service_tier"] == "flex"
    assert sent["response_format"] == {"type": "json_object"}
    assert list(body(job("", tmp_path))) == ["model", "messages"]
    assert body(job('stop = "END"\ninclude-reasoning = false\n', tmp_path))["include_reasoning"] is False
    assert body(job('stop = "END"\n', tmp_path))["stop"] == "END"


def test_unset_extras_keep_old_fingerprints(tmp_path: Path) -> None:
    plain = Renderer(job("", tmp_path)).request(0, {"text": "x"})
    again = Renderer(job("", tmp_path)).request(0, {"text": "x"})
    tiered = Renderer(job('service-tier = "auto"\n', tmp_path)).request(0, {"text": "x"})
    assert plain.fingerprint == again.fingerprint != tiered.fingerprint
    assert plain.body == (b'{"model":"openai/gpt-oss-20b","messages":[{"role":"system","content":"You are a '
                          b'helpful assistant."},{"role":"user","content":"Summarise: x"}]}')


@pytest.mark.parametrize(("extra", "fragments"), [
    ('reasoning-format = "raw"\ninclude-reasoning = true\n', ["reasoning-format", "include-reasoning"]),
    ('stop = ["a", "b", "c", "d", "e"]\n', ["[task] stop", "at most 4"]),
    ("stop = [1]\n", ["[task] stop", "array of strings"]),
    ('stop = ""\n', ["[task] stop", "empty"]),
    ('reasoning-effort = "extreme"\n', ["reasoning-effort", '"low"']),
    ('reasoning-effort = "none"\n', ["reasoning-effort", "low, medium, high"]),
    ('service-tier = "gold"\n', ["service-tier", '"flex"']),
    ('include-reasoning = "yes"\n', ["include-reasoning", "true or false"]),
    ('response-format = "json"\n', ["response-format", "inline table"]),
    ('response-format = {type = "xml"}\n', ["response-format", "json_schema"]),
    ('response-format = {type = "json_schema", schema = {type = "object"}}\n', ["response-format", "name"]),
    ('response-format = {type = "json_schema", name = "n"}\n', ["response-format", "schema-file"]),
    ('response-format = {type = "json_object", strict = true}\n', ["response-format", "strict"]),
    ('response-format = {type = "json_schema", name = "n", schema = {}, strict = 1}\n', ["strict"]),
])
def test_bad_extras_are_config_errors(tmp_path: Path, extra: str, fragments: list[str]) -> None:
    message = problems(extra, tmp_path)
    assert str(tmp_path / "job.toml") in message and "[task]" in message
    for fragment in fragments:
        assert fragment in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = problems('stop = [1]\nservice-tier = "gold"\nreasoning-format = "raw"\n'
                       'include-reasoning = true\n', tmp_path)
    assert len(message.splitlines()) == 3, message


def test_qwen_takes_none_and_default(tmp_path: Path) -> None:
    text = HEAD.replace("openai/gpt-oss-20b", "qwen/qwen3.8-27b") + 'reasoning-effort = "none"\n'
    assert parse_job(text, tmp_path / "job.toml").task.reasoning_effort == "none"


def test_response_format_json_schema_inline_and_strict(tmp_path: Path) -> None:
    t = job('response-format = {type = "json_schema", name = "person", strict = true, schema = '
            '{type = "object", properties = {age = {type = "integer"}}}}\n', tmp_path)
    assert body(t)["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "person", "schema": {"type": "object", "properties": {"age": {"type": "integer"}}},
        "strict": True}}


def test_schema_file_is_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "jobs" / "schemas").mkdir(parents=True)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    (tmp_path / "jobs" / "schemas" / "s.json").write_text(json.dumps(schema), encoding="utf-8")
    text = HEAD + 'response-format = {type = "json_schema", name = "s", schema-file = "schemas/s.json"}\n'
    t = parse_job(text, tmp_path / "jobs" / "job.toml").task
    assert t.response_format == {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


@pytest.mark.parametrize(("content", "fragment"), [(None, "not found"), ("{nope", "not valid JSON"),
                                                   ("[1]", "must be a JSON object")])
def test_a_bad_schema_file_is_named(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / "s.json").write_text(content, encoding="utf-8")
    message = problems('response-format = {type = "json_schema", name = "s", schema-file = "s.json"}\n',
                       tmp_path)
    assert fragment in message and ("s.json" in message or content == "[1]"), message
    assert "[task] response-format" in message


def test_both_reasoning_keys_exit_2_and_send_nothing(tmp_path: Path, write_job: WriteJob,
                                                     run_batch: RunBatch) -> None:
    write_csv([{"id": "1", "name": "a", "experience": "b"}], tmp_path / "in.csv")
    path = write_job("in.csv", task={"reasoning-format": "raw", "include-reasoning": True})
    proc = run_batch(path, "--base-url", "http://127.0.0.1:9/v1")
    assert proc.returncode == 2, proc.stderr
    assert "reasoning-format" in proc.stderr and "include-reasoning" in proc.stderr


def test_an_old_store_gains_the_reasoning_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE answers (fingerprint TEXT PRIMARY KEY, text TEXT, input_tokens INTEGER,
            output_tokens INTEGER, total_tokens INTEGER, reasoning_tokens INTEGER, cached_tokens INTEGER,
            finish_reason TEXT, request_id TEXT, model TEXT, latency_s REAL, queue_time REAL,
            total_time REAL, attempts INTEGER NOT NULL, error TEXT, permanent INTEGER NOT NULL,
            run INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, summary TEXT);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO answers (fingerprint, text, attempts, permanent, run) VALUES ('old', 'kept', 1, 0, 1);
    """)
    db.close()
    reader = Store(path, readonly=True)  # a reader of the old store sees NULL reasoning
    assert [a.reasoning for a in reader] == [None]
    reader.close()
    store = Store(path)
    store.begin_run()
    store.put(Answer(fingerprint="new", text="t", reasoning="because", attempts=1))
    got = store.get_many(["old", "new"])
    store.close()
    assert got["old"][0].text == "kept" and got["old"][0].reasoning is None
    assert got["new"][0].reasoning == "because"


class Capture(LocalServer):
    """An OpenAI-style server at /v1 without /models (like llama.cpp): records bodies, answers with
    reasoning when asked for it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        message: dict[str, Any] = {"role": "assistant", "content": "answer"}
        if body.get("reasoning_format") == "parsed":
            message["reasoning"] = "thought about " + str(body["messages"][-1]["content"])
        return completion(message, model=body["model"])


def test_extras_reach_the_wire_and_reasoning_the_output(tmp_path: Path, background_loop: BackgroundLoop,
                                                       write_job: WriteJob, run_batch: RunBatch) -> None:
    capture = Capture()
    url = background_loop.run(capture.start())
    write_csv([{"id": str(i), "name": f"n{i}", "experience": f"e{i}"} for i in range(3)], tmp_path / "in.csv")
    path = write_job("in.csv", task={"model": QWEN, "prompt": "${experience}", "stop": "END",
                                     "reasoning-effort": "high", "reasoning-format": "parsed",
                                     "service-tier": "auto"})
    try:
        proc = run_batch(path, "--base-url", url)
    finally:
        background_loop.run(capture.runner.cleanup())
    assert proc.returncode == 0, proc.stderr
    assert len(capture.bodies) == 3
    for sent in capture.bodies:
        assert set(sent) == {"model", "messages", "stop", "reasoning_effort", "reasoning_format",
                             "service_tier"}
        assert (sent["stop"], sent["reasoning_effort"], sent["service_tier"]) == ("END", "high", "auto")
    table = pq.read_table(tmp_path / "out.parquet")
    names = table.column_names
    assert names[names.index("total_time") + 1] == "reasoning"
    assert table.column("reasoning").to_pylist() == [f"thought about e{i}" for i in range(3)]
