"""Any OpenAI-compatible server: what goes over the wire to a server that is not Groq, and to Groq.

A local server records every body it is sent (`Recorder`); `python -m batch run` runs against it as a
subprocess. The bytes sent to Groq are pinned: a job that ran before keeps its fingerprints (and so
its stored answers) whatever is added for other servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, LocalServer, cli_env, completion, serve_app
from nasty import write_csv

from batch.job.config import parse_job
from batch.job.endpoint import sends_max_tokens
from batch.render.prompts import Renderer

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]


class Recorder(LocalServer):
    """Answers "ok" to every chat request and keeps each request's JSON body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return completion("ok")


def rows(n: int) -> list[dict[str, str | None]]:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"experience number {i}"} for i in range(n)]


def test_an_empty_system_message_sends_none(tmp_path: Path, background_loop: BackgroundLoop,
                                            write_job: WriteJob, run_batch: RunBatch) -> None:
    server = Recorder()
    url = background_loop.run(server.start())
    write_csv(rows(3), tmp_path / "in.csv")
    job = write_job("in.csv", task={"system-message": ""})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    assert len(server.bodies) == 3
    for body in server.bodies:
        assert [m["role"] for m in body["messages"]] == ["user"], body
    assert pq.read_table(tmp_path / "out.parquet").column("text").to_pylist() == ["ok"] * 3


# The body (and so the fingerprint) of a plain job, as every earlier version sent it to Groq.
PINNED_JOB = """
[input]
path = "in.csv"
[task]
model = "openai/gpt-oss-20b"
prompt = "Rewrite: ${experience}"
max-new-tokens = 300
temperature = 0
seed = 7
"""
PINNED_BODY = ('{"model":"openai/gpt-oss-20b","messages":[{"role":"system","content":"You are a helpful '
               'assistant."},{"role":"user","content":"Rewrite: x"}],"temperature":0.0,'
               '"max_completion_tokens":300,"seed":7}')


def test_the_bytes_sent_to_groq_do_not_change(tmp_path: Path) -> None:
    job = parse_job(PINNED_JOB, tmp_path / "job.toml")
    request = Renderer(job.task).request(0, {"experience": "x"})
    assert request.body.decode() == PINNED_BODY
    assert request.fingerprint == "fa349e8d45b1a7486de6c1d7eb779a2c"


class Rejecter(LocalServer):
    """Refuses every chat request with a 400 whose message holds common words."""

    async def chat(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "Input should be 'text' or 'image_url'",
                                             "type": "invalid_request_error"}}, status=400)


def test_a_short_key_is_not_blotted_out_of_words(tmp_path: Path, background_loop: BackgroundLoop,
                                                 write_job: WriteJob) -> None:
    url = background_loop.run(Rejecter().start())
    write_csv(rows(2), tmp_path / "in.csv")
    job = write_job("in.csv")

    # A local server takes any key; "x" is in every other word, so `run_batch`'s leak check cannot hold.
    proc = subprocess.run([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                          env=cli_env("x"), cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1, proc.stderr
    errors = pq.read_table(tmp_path / "out.parquet").column("error").to_pylist()
    assert errors == ["400: Input should be 'text' or 'image_url'"] * 2


class Target:
    """Where redirects lead: records the Authorization header of everything it is sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.any)

    async def any(self, request: web.Request) -> web.Response:
        self.seen.append((f"{request.method} {request.path}", request.headers.get("Authorization")))
        return web.json_response({"object": "list", "data": [{"id": "openai/gpt-oss-20b"}]})


async def serve(app: web.Application) -> str:
    return await serve_app(web.AppRunner(app))


def test_redirects_never_carry_the_key_elsewhere(tmp_path: Path, background_loop: BackgroundLoop,
                                                 write_job: WriteJob, run_batch: RunBatch) -> None:
    target = Target()
    elsewhere = background_loop.run(serve(target.app))  # another port: another origin
    redirector = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{elsewhere}{request.path}")

    redirector.router.add_route("*", "/{tail:.*}", moved)
    url = background_loop.run(serve(redirector)) + "/v1"
    write_csv(rows(2), tmp_path / "in.csv")
    job = write_job("in.csv")

    proc = run_batch(job, "--base-url", url)

    # The model list (a GET) is followed, without the key; the chat request (a POST) is not followed.
    assert target.seen == [("GET /v1/models", None)], target.seen
    assert proc.returncode == 4, proc.stderr
    assert "was redirected (HTTP 307)" in proc.stderr and "does not follow a redirect" in proc.stderr


def test_servers_other_than_groq_also_get_max_tokens_outside_the_fingerprint(tmp_path: Path) -> None:
    job = parse_job(PINNED_JOB, tmp_path / "job.toml")
    groq = Renderer(job.task).request(0, {"experience": "x"})
    local = Renderer(job.task, max_tokens=True).request(0, {"experience": "x"})
    assert local.body.decode() == PINNED_BODY[:-1] + ',"max_tokens":300}'
    assert json.loads(local.body)["max_tokens"] == json.loads(local.body)["max_completion_tokens"] == 300
    assert local.fingerprint == groq.fingerprint, "a stored answer must be found whichever name is sent"
    no_budget = parse_job(PINNED_JOB.replace("max-new-tokens = 300\n", ""), tmp_path / "job.toml")
    assert b"max_tokens" not in Renderer(no_budget.task, max_tokens=True).request(0, {"experience": "x"}).body


@pytest.mark.parametrize(("url", "setting", "expected"), [
    ("https://api.groq.com/openai/v1", None, False),
    ("http://127.0.0.1:8000/openai/v1", None, False),  # the simulator: Groq's path
    ("https://api.openai.com/v1", None, False),
    ("http://127.0.0.1:8080/v1", None, True),  # llama.cpp, vLLM, LM Studio, ...
    ("https://llm.example.com/v1", None, True),
    ("http://127.0.0.1:8080/v1", False, False),
    ("https://api.groq.com/openai/v1", True, True),
])
def test_who_gets_max_tokens(tmp_path: Path, url: str, setting: bool | None, expected: bool) -> None:
    extra = "" if setting is None else f"[api]\nsend-max-tokens = {str(setting).lower()}\n"
    job = parse_job(PINNED_JOB + extra, tmp_path / "job.toml")
    assert sends_max_tokens(job, url) is expected
