"""batch's HTTP client against OpenAI-compatible servers that batch did not write.

Our own simulator (tests/test_simulator.py) is checked against Groq's SDK; here the roles swap: two
independent mock servers, each run as a real subprocess on 127.0.0.1, and `batch.send.client.Client` (and a
whole `python -m batch run`) must make sense of what they send.

  aimock     npm `@copilotkit/aimock` (its `llmock` CLI): fixture-driven; answers Groq's path
             /openai/v1/chat/completions, and injects 429s (with Retry-After), 500/503s, dropped
             connections, malformed JSON and latency, per fixture. Fixtures: thirdparty/aimock-*.json.
  mocklimit  PyPI `mocklimit`: serves an OpenAPI spec (thirdparty/mocklimit-openapi.yaml) and counts
             real rate limits per API key (thirdparty/mocklimit-*.yaml), answering 429 when spent.

Both are pinned in tests/thirdparty/ (package.json + package-lock.json, requirements.txt). A test whose
server is not installed is skipped with the command that installs it:

    npm ci --prefix tests/thirdparty
    pip install -r tests/thirdparty/requirements.txt

"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batch.errors import ApiError, FatalApiError, RateLimited, ServerError, TransportError
from batch.records import Completion
from batch.send.client import Client

ROOT = Path(__file__).resolve().parent.parent
THIRD = ROOT / "tests" / "thirdparty"
LLMOCK = THIRD / "node_modules" / ".bin" / "llmock"
MODEL = "openai/gpt-oss-20b"
KEY = "gsk_third_party_test_key"  # a fake key: the servers only count by it
STARTUP_S = 20.0  # how long a server may take to answer its readiness URL
RUN_TIMEOUT_S = 60.0  # a whole `python -m batch run`


# -- servers as subprocesses --------------------------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    root: str  # http://127.0.0.1:PORT
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.root}/openai/v1"  # Groq's path: the client posts to {base}/chat/completions

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _http(method: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A request that ignores any proxy settings in the environment (loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, method=method)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start(argv: Callable[[int], list[str]], ready_path: str, log: Path) -> Server:
    """Start a server on a free port and wait (bounded) until `ready_path` answers 200."""
    for _ in range(3):  # the port may be taken between choosing it and the server binding it
        port = _free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(argv(port), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=THIRD)
        server = Server(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + STARTUP_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if _http("GET", server.root + ready_path, timeout=1.0)[0] == 200:
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        _stop(proc)
        if time.monotonic() >= deadline:
            pytest.fail(f"{argv(port)[0]} did not answer {ready_path} within {STARTUP_S:g}s:\n"
                        f"{server.log_tail()}")
    pytest.fail(f"{argv(0)[0]} exited at startup three times:\n{server.log_tail()}")


def _need_aimock() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed, so aimock (npm @copilotkit/aimock) cannot run")
    if not LLMOCK.exists():
        pytest.skip("aimock is not installed; install it with: npm ci --prefix tests/thirdparty")


def _need_mocklimit() -> None:
    if importlib.util.find_spec("mocklimit") is None:
        pytest.skip("mocklimit is not installed; install it with: "
                    "pip install -r tests/thirdparty/requirements.txt")


def _aimock(fixtures: str, log: Path) -> Server:
    _need_aimock()
    return _start(lambda port: [str(LLMOCK), "--host", "127.0.0.1", "--port", str(port),
                                "--fixtures", str(THIRD / fixtures), "--log-level", "warn"],
                  "/health", log)


def _mocklimit(config: str, log: Path) -> Server:
    _need_mocklimit()
    return _start(lambda port: [sys.executable, "-m", "mocklimit", "serve",
                                "--spec", str(THIRD / "mocklimit-openapi.yaml"),
                                "--rate-config", str(THIRD / config),
                                "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                  "/mocklimit/routes", log)


@pytest.fixture(scope="module")
def aimock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _aimock("aimock-fixtures.json", tmp_path_factory.mktemp("aimock") / "server.log")
    try:
        yield server
    finally:
        _stop(server.proc)


@pytest.fixture(scope="module")
def mocklimit_groq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _mocklimit("mocklimit-groq.yaml", tmp_path_factory.mktemp("mocklimit") / "server.log")
    try:
        yield server
    finally:
        _stop(server.proc)


# -- driving the client -------------------------------------------------------------------------------

def _body(user: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": user}]}).encode()


async def _chats(base_url: str, users: list[str], *, key: str | None = KEY,
                 timeout_s: float = 5.0) -> list[Completion | ApiError]:
    """Each request in turn on one client (one keep-alive session), answers and errors alike."""
    out: list[Completion | ApiError] = []
    async with Client(base_url, key, timeout_s=timeout_s, connections=1) as client:
        for user in users:
            try:
                out.append(await client.chat(_body(user)))
            except ApiError as exc:
                out.append(exc)
    return out


def chat(base_url: str, user: str, **kw: Any) -> Completion:
    [got] = asyncio.run(_chats(base_url, [user], **kw))
    assert isinstance(got, Completion), f"expected a completion, got {got!r}"
    return got


def chat_error(base_url: str, user: str, **kw: Any) -> ApiError:
    [got] = asyncio.run(_chats(base_url, [user], **kw))
    assert isinstance(got, ApiError), f"expected an error, got {got!r}"
    assert KEY not in str(got)
    return got


def models(base_url: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with Client(base_url, KEY, timeout_s=5.0, connections=1) as client:
            return await client.models()
    return asyncio.run(go())


def journal(server: Server) -> list[dict[str, Any]]:
    """aimock's record of the chat requests it received, oldest first."""
    status, body = _http("GET", f"{server.root}/__aimock/journal?path=chat/completions")
    assert status == 200, body
    entries: list[dict[str, Any]] = json.loads(body)
    return entries


# -- aimock: one request at a time --------------------------------------------------------------------

def test_aimock_completion_parses(aimock: Server) -> None:
    before = len(journal(aimock))
    c = chat(aimock.base_url, "tp-ok: say hello")
    assert (c.text, c.finish_reason, c.model) == ("Hello from aimock.", "stop", MODEL)
    assert (c.input_tokens, c.output_tokens, c.total_tokens) == (12, 4, 16)
    assert c.request_id and c.request_id.startswith("req-")  # aimock's X-Request-Id header
    [entry] = journal(aimock)[before:]
    assert entry["path"] == "/openai/v1/chat/completions"
    assert entry["headers"].get("authorization")  # sent (aimock's journal shows it "[REDACTED]")
    assert entry["body"]["messages"][-1] == {"role": "user", "content": "tp-ok: say hello"}


def test_aimock_models_list(aimock: Server) -> None:
    ids = {m.get("id") for m in models(aimock.base_url)}
    assert "gpt-4o" in ids  # aimock's built-in list: the client only needs the OpenAI shape


@pytest.mark.parametrize(
    ("user", "cls", "status", "code", "retry_after", "limit"),
    [
        # Groq's own wording: the body's precise wait beats the rounded Retry-After (2).
        ("tp-429-tpm", RateLimited, 429, "rate_limit_exceeded", 2.5, "tpm"),
        # Retry-After 91 vs "try again in 1m30.5s": the longer one wins; a daily limit.
        ("tp-429-rpd", RateLimited, 429, "rate_limit_exceeded", 91.0, "rpd"),
        # aimock's chaos 429: Retry-After: 1, a body that names no limit.
        ("tp-chaos-429", RateLimited, 429, "chaos_ratelimit", 1.0, None),
        ("tp-chaos-500", ServerError, 500, "chaos_drop", None, None),
        ("tp-503", ServerError, 503, "service_unavailable", None, None),
        ("tp-401", FatalApiError, 401, "invalid_api_key", None, None),
        # No fixture matched: aimock's 404, which is also what a wrong base URL gets.
        ("tp-unmatched", FatalApiError, 404, "no_fixture_match", None, None),
        # The socket is destroyed before any status line.
        ("tp-disconnect", TransportError, None, None, None, None),
        # 200 with `{malformed json: <<<chaos>>>`.
        ("tp-malformed", TransportError, 200, None, None, None),
    ],
)
def test_aimock_error_is_typed(aimock: Server, user: str, cls: type[ApiError], status: int | None,
                               code: str | None, retry_after: float | None, limit: str | None) -> None:
    err = chat_error(aimock.base_url, user)
    assert type(err) is cls, err
    assert (err.status, err.code) == (status, code)
    assert err.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)
    if isinstance(err, RateLimited):
        assert err.limit == limit
        assert err.daily == (limit in ("rpd", "tpd"))


def test_aimock_latency_past_the_timeout_is_a_transport_error(aimock: Server) -> None:
    err = chat_error(aimock.base_url, "tp-slow", timeout_s=0.5)  # the fixture waits 3 s, then answers
    assert type(err) is TransportError and "timed out" in str(err)


def test_aimock_same_session_survives_faults(aimock: Server) -> None:
    """After a dropped connection and a malformed body, the next request on the session still works."""
    got = asyncio.run(_chats(aimock.base_url, ["tp-disconnect", "tp-ok", "tp-malformed", "tp-ok"]))
    assert [type(g).__name__ for g in got] == ["TransportError", "Completion", "TransportError",
                                                "Completion"]


@pytest.mark.parametrize("user", ["tp-429-nan", "tp-429-inf"])
def test_aimock_non_finite_retry_after_is_ignored(aimock: Server, user: str) -> None:
    err = chat_error(aimock.base_url, user)
    assert isinstance(err, RateLimited)
    assert err.retry_after is None or (math.isfinite(err.retry_after) and err.retry_after >= 0)


# -- a whole run ------------------------------------------------------------------------------------------

def _run_job(tmp_path: Path, words: list[str], base_url: str, *, concurrency: int, model: str = MODEL,
             timeout: float = RUN_TIMEOUT_S) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    """`python -m batch run` over a tiny CSV; returns the process and the output rows."""
    with (tmp_path / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "word"])
        w.writerows([i, word] for i, word in enumerate(words, 1))
    (tmp_path / "job.toml").write_text(f"""\
[input]
path = "in.csv"
key = "id"

[task]
model = "{model}"
prompt = "Answer for ${{word}}, please."
max-new-tokens = 20

[limits]
requests-per-minute = 6000
tokens-per-minute = 1000000
concurrency = {concurrency}
max-attempts = 6
request-timeout = 10

[output]
path = "out.csv"
text-column = "answer"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROQ_")}
    env["GROQ_API_KEY"] = KEY
    proc = subprocess.run([sys.executable, "-m", "batch", "run", str(tmp_path / "job.toml"),
                           "--base-url", base_url, "-v"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert KEY not in proc.stdout + proc.stderr
    out = tmp_path / "out.csv"
    if not out.exists():
        return proc, []
    with out.open(newline="") as f:
        return proc, list(csv.DictReader(f))


def test_aimock_full_run_retries_through_injected_faults(tmp_path: Path) -> None:
    """Each row's first answers are faults (aimock's sequenceIndex), then an answer: the run ends 0."""
    server = _aimock("aimock-run-fixtures.json", tmp_path / "server.log")
    try:
        words = ["row alpha", "row bravo", "row charlie", "row delta", "row echo"]
        # batch checks the job's model against GET /models before sending; aimock lists its own
        # built-in models (and answers by fixture whatever the model), so ask for one it lists.
        proc, rows = _run_job(tmp_path, words, server.base_url, concurrency=3, model="gpt-4o")
        assert proc.returncode == 0, proc.stderr
        got = {r["word"]: (r["answer"], int(r["attempts"]), int(r["input_tokens"]), r["error"])
               for r in rows}
        assert got == {
            "row alpha": ("Alpha answered.", 2, 11, ""),  # 429 (Retry-After 1), then the answer
            "row bravo": ("Bravo answered.", 3, 12, ""),  # 500, 503, then the answer
            "row charlie": ("Charlie answered.", 2, 13, ""),  # connection destroyed, then the answer
            "row delta": ("Delta answered.", 2, 14, ""),  # malformed JSON, then the answer
            "row echo": ("Echo answered.", 1, 15, ""),
        }, proc.stderr
        entries = journal(server)
        assert len(entries) == 10  # exactly the attempts above: no request lost or sent twice
        assert all(e["headers"].get("authorization") for e in entries)
        assert "429" in proc.stderr and "chaos_drop" in proc.stderr  # -v logs every retry
    finally:
        _stop(server.proc)
    assert KEY not in (tmp_path / "out.csv").read_text()


# -- mocklimit: real per-key counting -------------------------------------------------------------------

def test_mocklimit_counts_requests_per_key(mocklimit_groq: Server) -> None:
    url = mocklimit_groq.base_url
    first = asyncio.run(_chats(url, ["one", "two", "three", "four"], key="gsk_key_a"))
    answers = [c for c in first[:3] if isinstance(c, Completion)]
    assert len(answers) == 3, first
    for c in answers:
        assert (c.text, c.finish_reason, c.model) == ("Answer from mocklimit.", "stop", MODEL)
        assert (c.input_tokens, c.output_tokens, c.total_tokens) == (21, 5, 26)
        assert c.request_id == "chatcmpl-mocklimit"  # no X-Request-Id header: the body's id
        assert c.rate.requests_limit_day == 1000
        assert 86_000 < (c.rate.requests_reset_s or 0) <= 86_400  # "23h59m59.9s"
    assert [c.rate.requests_remaining_day for c in answers] == [999, 998, 997]
    # The 4th request within 4 s: a 429 whose `retry-after` (whole seconds) says when to come back.
    limited = first[3]
    assert type(limited) is RateLimited, limited
    assert limited.status == 429
    assert limited.retry_after is not None and 0 < limited.retry_after <= 4
    assert not limited.daily
    # Another key has its own budgets.
    other = chat(url, "five", key="gsk_key_b")
    assert other.rate.requests_remaining_day == 999


def test_mocklimit_models_list(mocklimit_groq: Server) -> None:
    assert [m["id"] for m in models(mocklimit_groq.base_url)] == [MODEL]


def test_mocklimit_full_run_waits_out_its_429s(tmp_path: Path, mocklimit_groq: Server) -> None:
    """6 rows, 3 in flight, against 3 requests per 4 s: rows 4-6 get 429, wait it out, succeed."""
    proc, rows = _run_job(tmp_path, [f"w{i}" for i in range(6)], mocklimit_groq.base_url, concurrency=3)
    assert proc.returncode == 0, proc.stderr
    assert [r["answer"] for r in rows] == ["Answer from mocklimit."] * 6
    assert all(r["error"] == "" for r in rows)
    attempts = [int(r["attempts"]) for r in rows]
    assert sum(attempts) > 6 and max(attempts) <= 3, (attempts, proc.stderr)
    # Each retry after a 429 waited out the window the server named: it did not hammer through.
    waits = re.findall(r"retry row=\d+ attempt=\d+ in ([0-9.]+)s: 429: .* retry after (\d+) seconds",
                       proc.stderr)
    assert waits and all(float(wait) >= int(after) for wait, after in waits), proc.stderr


@pytest.fixture(scope="module")
def mocklimit_openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _mocklimit("mocklimit-openai.yaml", tmp_path_factory.mktemp("mocklimit") / "server.log")
    try:
        yield server
    finally:
        _stop(server.proc)


def test_mocklimit_retry_after_ms_is_read(mocklimit_openai: Server) -> None:
    got = asyncio.run(_chats(mocklimit_openai.base_url, ["a", "b", "c", "d"], key="gsk_key_c"))
    limited = got[3]
    assert type(limited) is RateLimited, limited
    assert limited.retry_after is not None and 0 < limited.retry_after <= 4


def test_mocklimit_openai_style_full_run(tmp_path: Path, mocklimit_openai: Server) -> None:
    proc, rows = _run_job(tmp_path, [f"w{i}" for i in range(6)], mocklimit_openai.base_url,
                          concurrency=3, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert [r["answer"] for r in rows] == ["Answer from mocklimit."] * 6
