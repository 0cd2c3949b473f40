"""Structured output in each server's own spelling, and a server that refuses a request's shape.

Groq, OpenAI and vLLM take `{"type": "json_schema", "json_schema": {...}}`; llama.cpp's servers take
`{"type": "json_object", "schema": {...}}`. Which one a server is comes from `[api] server`, the URL,
or the server itself; the fingerprint is the same in both spellings. A server that refuses the
request's shape (here: llama-cpp-python's 500 for json_schema) stops the run once, not row by row.
The real llama.cpp server is in test_llamacpp.py; the servers here are small aiohttp doubles.
"""

from __future__ import annotations

import json
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

from batch.errors import BadRequest, ServerError
from batch.job.config import parse_job
from batch.job.endpoint import sends_max_tokens, server_kind
from batch.render.prompts import Renderer
from batch.send.responses import error_from_response

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"who": {"type": "string"},
                                                           "n": {"type": "integer"}},
                          "required": ["who", "n"], "additionalProperties": False}
FORMAT_TOML = ('{type = "json_schema", name = "row", strict = true, schema = {type = "object", '
               'properties = {who = {type = "string"}, n = {type = "integer"}}, required = ["who", "n"], '
               "additionalProperties = false}}")
JOB = f"""
[input]
path = "in.csv"
[task]
model = "gemma"
prompt = "Row ${{id}}: ${{name}}"
max-new-tokens = 50
response-format = {FORMAT_TOML}
"""
# What llama-cpp-python 0.3.36 answers to a json_schema response format (observed; shortened).
PYDANTIC_500 = {"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                          "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
                          "'input': 'json_schema'}\n\n  File \"app.py\", line 376, in create_chat_completion",
                          "type": "internal_server_error", "param": None, "code": None}}


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": str(i), "name": f"person {i}", "experience": "-"} for i in range(n)]


def render(server: str | None, *, max_tokens: bool = False, extra: str = "") -> tuple[str, dict[str, Any]]:
    job = parse_job(JOB + extra, Path("/tmp/job.toml"))
    request = Renderer(job.task, max_tokens=max_tokens, server=server).request(0, {"id": 1, "name": "a"})
    return request.fingerprint, json.loads(request.body)


def test_llama_cpp_gets_json_object_with_its_schema_and_the_same_fingerprint() -> None:
    groq_fp, groq = render(None)
    llama_fp, llama = render("llama.cpp", max_tokens=True)
    assert groq["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "row", "schema": SCHEMA, "strict": True}}
    assert llama["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert llama["max_tokens"] == llama["max_completion_tokens"] == 50
    assert {k: v for k, v in llama.items() if k not in ("response_format", "max_tokens")} == \
        {k: v for k, v in groq.items() if k != "response_format"}
    assert llama_fp == groq_fp, "the same request in another spelling: its stored answer must be found"
    for server in ("groq", "openai", "vllm", None):
        assert render(server)[1] == groq
    # json_object without a schema is the same word everywhere.
    plain = JOB.replace(FORMAT_TOML, '{type = "json_object"}')
    job = parse_job(plain, Path("/tmp/job.toml"))
    same = [Renderer(job.task, server=s).request(0, {"id": 1, "name": "a"}).body for s in ("llama.cpp", None)]
    assert same[0] == same[1]


def test_the_columnar_path_spells_like_the_row_path() -> None:
    job = parse_job(JOB, Path("/tmp/job.toml"))
    renderer = Renderer(job.task, max_tokens=True, server="llama.cpp")
    chunk = pa.RecordBatch.from_pylist(rows(5))
    (group,) = renderer.groups(chunk, 0)
    reference = renderer.render_chunk(chunk, 0)
    assert [group.request(i).body for i in range(5)] == [r.body for r in reference]  # type: ignore[union-attr]
    assert json.loads(group.request(0).body)["response_format"]["type"] == "json_object"


@pytest.mark.parametrize(("url", "setting", "kind"), [
    ("https://api.groq.com/openai/v1", None, "groq"),
    ("http://127.0.0.1:8000/openai/v1", None, "groq"),  # the simulator: Groq's path
    ("https://api.openai.com/v1", None, "openai"),
    ("http://127.0.0.1:8080/v1", None, None),  # asked, when it matters
    ("http://127.0.0.1:8080/v1", "llama.cpp", "llama.cpp"),
    ("https://proxy.example.com/groq", "groq", "groq"),
])
def test_server_kind_from_the_job_then_the_url(url: str, setting: str | None, kind: str | None) -> None:
    extra = "" if setting is None else f'[api]\nserver = "{setting}"\n'
    job = parse_job(JOB + extra, Path("/tmp/job.toml"))
    assert server_kind(job, url) == kind
    assert sends_max_tokens(job, url) is (kind not in ("groq", "openai"))


def test_an_unknown_server_kind_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"\[api\] server: must be one of .*llama.cpp"):
        parse_job(JOB + '[api]\nserver = "ollama"\n', Path("/tmp/job.toml"))


def test_a_refused_field_is_read_from_each_servers_error_shape() -> None:
    refused = error_from_response(500, json.dumps(PYDANTIC_500).encode(), {})
    assert isinstance(refused, BadRequest) and refused.param == "response_format.type"
    fastapi = error_from_response(422, b'{"detail": [{"loc": ["body", "response_format", "type"], '
                                       b'"msg": "bad"}]}', {})
    assert isinstance(fastapi, BadRequest) and fastapi.param == "response_format.type"
    openai = error_from_response(400, b'{"error": {"message": "m", "param": "response_format"}}', {})
    assert openai.param == "response_format"
    crash = error_from_response(500, b'{"error": {"message": "CUDA out of memory"}}', {})
    assert isinstance(crash, ServerError) and crash.param is None  # a crash is still retried


class LlamaLike(LocalServer):
    """An OpenAI-style server at /v1 that spells structured output as llama.cpp's servers do: it refuses
    json_schema the way llama-cpp-python does (500) and answers json_object with a schema. `says` is how
    it tells what it is: "models" (llama-server's owned_by), "props" (llama-server's /props), "openapi"
    (llama-cpp-python's title), or "nothing"."""

    def __init__(self, says: str) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/props", self.props)
        self.app.router.add_get("/openapi.json", self.openapi)
        self.says = says

    async def models(self, request: web.Request) -> web.Response:
        owner = "llamacpp" if self.says == "models" else "me"
        return web.json_response({"object": "list", "data": [{"id": "gemma", "object": "model",
                                                                "owned_by": owner}]})

    async def props(self, request: web.Request) -> web.Response:
        if self.says != "props":
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"default_generation_settings": {"n_ctx": 2048}, "total_slots": 1})

    async def openapi(self, request: web.Request) -> web.Response:
        title = "\N{LLAMA} llama.cpp Python API" if self.says == "openapi" else "FastAPI"
        return web.json_response({"openapi": "3.1.0", "info": {"title": title, "version": "0.3.36"}})

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if body.get("response_format", {}).get("type") != "json_object":
            return web.json_response(PYDANTIC_500, status=500)
        user = body["messages"][-1]["content"]
        return completion(json.dumps({"who": user, "n": len(user)}), model=body["model"])


def _job(tmp_path: Path, n: int, extra: str = "") -> Path:
    write_csv(rows(n), tmp_path / "in.csv")
    path = tmp_path / "job.toml"
    path.write_text(JOB + '[limits]\nconcurrency = 4\nmax-attempts = 6\nrequest-timeout = 10\n[output]\n'
                    'path = "out.parquet"\n' + extra, encoding="utf-8")
    return path


@pytest.mark.parametrize("says", ["models", "props", "openapi"])
def test_a_llama_cpp_server_is_recognised_and_answered_in_its_spelling(
        tmp_path: Path, background_loop: BackgroundLoop, run_batch: RunBatch, says: str) -> None:
    server = LlamaLike(says)
    url = background_loop.run(server.start())
    try:
        proc = run_batch(_job(tmp_path, 6), "--base-url", url, key=None)
    finally:
        background_loop.run(server.runner.cleanup())
    assert proc.returncode == 0, proc.stderr
    assert len(server.bodies) == 6
    assert all(b["response_format"] == {"type": "json_object", "schema": SCHEMA} for b in server.bodies)
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["who"], r["n"], r["error"]) for r in out] == [
        (f"Row {i}: person {i}", len(f"Row {i}: person {i}"), None) for i in range(6)]


def test_a_server_that_refuses_the_shape_stops_the_run_once(
        tmp_path: Path, background_loop: BackgroundLoop, run_batch: RunBatch) -> None:
    """It says nothing of what it is, and answers json_schema with llama-cpp-python's 500: the run stops
    after the first requests (exit 4) instead of retrying every row, and stores none of them."""
    server = LlamaLike("nothing")
    url = background_loop.run(server.start())
    try:
        job = _job(tmp_path, 60)
        proc = run_batch(job, "--base-url", url, key=None)
        refused = len(server.bodies)
        assert proc.returncode == 4, proc.stderr
        assert refused <= 4, f"{refused} requests: the refusal was retried or repeated row after row"
        assert "'response_format'" in proc.stderr and '[api] server = "llama.cpp"' in proc.stderr
        assert proc.stderr.count("Input should be 'text' or 'json_object'") <= 2  # said once (and summed up)
        assert not (tmp_path / "out.parquet").exists()

        # Told what the server is, the next run sends every row, those refused included.
        job.write_text(job.read_text(encoding="utf-8") + '[api]\nserver = "llama.cpp"\n', encoding="utf-8")
        again = run_batch(job, "--base-url", url, key=None)
    finally:
        background_loop.run(server.runner.cleanup())
    assert again.returncode == 0, again.stderr
    assert len(server.bodies) == refused + 60
    assert pq.read_table(tmp_path / "out.parquet").column("error").to_pylist() == [None] * 60


class OpenAIRefuser(LocalServer):
    """Refuses every request's response format the way OpenAI and Groq say so: a 400 naming the param."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.count += 1
        return web.json_response({"error": {"message": "Invalid schema for response_format 'row'",
                                            "type": "invalid_request_error", "param": "response_format",
                                            "code": "invalid_value"}}, status=400)


def test_a_400_that_names_the_response_format_stops_the_run_once(
        tmp_path: Path, background_loop: BackgroundLoop, run_batch: RunBatch) -> None:
    server = OpenAIRefuser()
    url = background_loop.run(server.start())
    try:
        proc = run_batch(_job(tmp_path, 60, '[api]\nserver = "vllm"\n'), "--base-url", url, key=None)
    finally:
        background_loop.run(server.runner.cleanup())
    assert proc.returncode == 4, proc.stderr
    assert server.count <= 4 and "[task] response-format" in proc.stderr
