"""Shared fixtures for the end-to-end tests.

* `start_sim(**config)`: a Groq `Simulator` serving on a real 127.0.0.1 socket from a background
  thread with its own event loop; returns `(base_url, simulator)`. `simulator` is one with defaults.
  The simulator's limits default to "never in the way", so only the job's own pacing matters.
* `write_job(input_path, **tables)`: a job file in `tmp_path`, fast defaults merged with overrides
  (`None` as a key's value removes that key).
* `run_batch(job, *args, key=...)`: `python -m batch run ...` as a real subprocess; every run checks
  that the API key never shows on stdout or stderr, and at teardown no file under `tmp_path` holds it.
* `BackgroundLoop`: an event loop in a daemon thread, for any aiohttp server a test needs.
* `wait_until(condition, what)`: how a test waits for something another process or thread does: on a
  condition (a log line, a file, a server counter), never on a sleep; the deadline only stops a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from batch.sim import SimConfig, Simulator

REPO = Path(__file__).resolve().parent.parent
MODEL = "openai/gpt-oss-20b"
T = TypeVar("T")

# A deadline against hanging only: nothing takes this long when all is well, even on a loaded machine.
HANG_GUARD_S = 60.0

# Simulator limits that never throttle a test that does not ask to be throttled.
SIM_FAST: dict[str, Any] = {"rpm": 10_000_000, "tpm": 10**12, "rpd": 10**9, "tpd": 10**15}

# Job defaults: pacing far above what a test sends, short timeouts, quick failures.
JOB_DEFAULTS: dict[str, dict[str, Any]] = {
    "task": {
        "model": MODEL,
        "prompt": "Rewrite for ${name}:\n${experience}",
    },
    "limits": {
        "requests-per-minute": 6_000_000,
        "tokens-per-minute": 1_000_000_000,
        "concurrency": 8,
        "max-attempts": 6,
        "request-timeout": 5,
    },
    "output": {"path": "out.parquet"},
}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = HANG_GUARD_S) -> None:
    """Poll `condition` until it holds; fail naming `what` if it still does not after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# Servers of a test's own, by the loop they listen on: the loop's fixture closes what its test left
# open, so no listening socket outlives its test (an unclosed socket is a ResourceWarning, an error).
_SERVING: dict[asyncio.AbstractEventLoop, list[web.AppRunner]] = {}


async def serve_app(runner: web.AppRunner) -> str:
    """Start `runner` on a loopback port (closed at the latest when its loop's fixture ends); its URL."""
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    _SERVING.setdefault(asyncio.get_running_loop(), []).append(runner)
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


class BackgroundLoop:
    """An asyncio loop running forever in a daemon thread; `run()` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        for runner in _SERVING.pop(self.loop, []):
            self.run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def background_loop() -> Iterator[BackgroundLoop]:
    bg = BackgroundLoop()
    yield bg
    bg.close()


@pytest.fixture
def start_sim(background_loop: BackgroundLoop) -> Iterator[Callable[..., tuple[str, Simulator]]]:
    """Start simulators on loopback sockets: `start_sim(latency_ms=..., clock=...) -> (base_url, sim)`."""
    started: list[Simulator] = []

    def start(clock: Callable[[], float] = time.monotonic, **config: Any) -> tuple[str, Simulator]:
        sim = Simulator(SimConfig(**{**SIM_FAST, **config}), clock=clock)
        url = background_loop.run(sim.start())
        started.append(sim)
        return url, sim

    yield start
    for sim in started:
        background_loop.run(sim.stop())


@pytest.fixture
def simulator(start_sim: Callable[..., tuple[str, Simulator]]) -> tuple[str, Simulator]:
    """A fault-free, instant simulator: (base_url, sim)."""
    return start_sim()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are TOML basic-string escapes, as long as non-ASCII stays raw
        # (TOML has no surrogate-pair escapes).
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no TOML for {value!r}")


def job_toml(tables: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """`write_job(input_path, name="job.toml", task={...}, limits={...}, ...) -> job path`."""

    def write(input_path: Path | str, *, name: str = "job.toml", **overrides: dict[str, Any]) -> Path:
        tables: dict[str, dict[str, Any]] = {"input": {"path": str(input_path)}}
        for table in dict.fromkeys([*JOB_DEFAULTS, *overrides]):
            tables[table] = {**tables.get(table, {}), **JOB_DEFAULTS.get(table, {}),
                             **overrides.get(table, {})}
        path = tmp_path / name
        path.write_text(job_toml(tables), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def api_key() -> str:
    """A secret-looking key, unique to the session, so finding it anywhere is a leak."""
    return f"gsk_TESTSECRET_{secrets.token_hex(20)}"


def cli_env(key: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROQ_")}
    if key is not None:
        env["GROQ_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def find_secret(root: Path, secret: str) -> list[str]:
    """Files under `root` whose bytes contain `secret` (UTF-8 or UTF-16, as SQLite may store text)."""
    needles = [secret.encode(enc) for enc in ("utf-8", "utf-16-le", "utf-16-be")]
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path))
    return hits


@pytest.fixture
def run_batch(tmp_path: Path, api_key: str) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run `python -m batch run JOB [args]` in a subprocess, by default with the test key set."""

    def run(job: Path, *args: str, key: str | None = api_key, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "batch", "run", str(job), *args],
                              env=env or cli_env(key), cwd=tmp_path, capture_output=True, text=True,
                              encoding="utf-8", timeout=timeout)
        for secret in {s for s in (api_key, key) if s}:
            assert secret not in proc.stdout and secret not in proc.stderr, "the API key was printed"
        return proc

    yield run
    assert find_secret(tmp_path, api_key) == [], "the API key was written to a file"


class LocalServer:
    """An OpenAI-style server of a test's own at `/v1` on a loopback port (like llama.cpp: no /models).
    Subclasses define `chat(request)`; `start()` returns the base URL."""

    def __init__(self, *, client_max_size: int = 1024**2) -> None:
        self.app = web.Application(client_max_size=client_max_size)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(self.app)

    async def chat(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def start(self) -> str:
        return f"{await serve_app(self.runner)}/v1"


def completion(content: str | dict[str, Any], *, model: str = "m") -> web.Response:
    """A minimal chat completion (usage 7 in, 3 out) answering `content`: text, or a whole message."""
    message = content if isinstance(content, dict) else {"role": "assistant", "content": content}
    return web.json_response({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    })
