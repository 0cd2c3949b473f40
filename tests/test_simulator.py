"""The Groq simulator, checked with Groq's own SDK as the reference client.

If the official `groq` SDK parses the simulator's answers and errors the way it parses Groq's, the
double is faithful where our client can tell. The simulator runs on a real loopback socket in a
thread with its own event loop; the sync SDK client talks to it like it would to api.groq.com.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import groq
import pytest
from conftest import HANG_GUARD_S, REPO, wait_until
from fakeclock import HeldClock

from batch.sim import (
    DECOMMISSIONED,
    KNOWN_MODELS,
    SimConfig,
    Simulator,
    add_cli_arguments,
    config_from_args,
    count_tokens,
    go_duration,
    serve,
    sim_answer,
)

MODEL = "openai/gpt-oss-20b"
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$")
T = TypeVar("T")


class Running:
    """A Simulator serving on 127.0.0.1 from a background thread, with SDK clients for it."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.sim = Simulator(config, clock=clock)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base_url = self.run(self.sim.start())
        self._clients: list[groq.Groq] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def client(self, api_key: str = "gsk_test", timeout: float = 5.0) -> groq.Groq:
        # The SDK appends /openai/v1 itself, so it gets the bare host.
        root = self.base_url.removesuffix("/openai/v1")
        client = groq.Groq(api_key=api_key, base_url=root, max_retries=0, timeout=timeout)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.run(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def make(clock: Callable[[], float] = time.monotonic, **config: Any) -> Running:
        started.append(Running(SimConfig(**config), clock))
        return started[-1]

    yield make
    for running in started:
        running.close()


def request(prompt: str = "Rewrite row 17 using STAR.", **params: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": "You are brief."},
                                         {"role": "user", "content": prompt}], **params}


def test_completion_parses_like_groq(make_sim: Callable[..., Running]) -> None:
    sim = make_sim()
    body = request(temperature=0, seed=7, max_completion_tokens=300)
    out = sim.client().chat.completions.create(**body)
    assert out.choices[0].message.content == sim_answer(body) == f"[{MODEL}] Rewrite row 17 using STAR."
    assert out.choices[0].finish_reason == "stop"
    assert out.id.startswith("chatcmpl-") and out.model == MODEL and out.system_fingerprint == "fp_sim"
    assert out.x_groq is not None and out.x_groq.id.startswith("req_")
    usage = out.usage
    assert usage is not None
    prompt = "Rewrite row 17 using STAR."
    assert usage.prompt_tokens == count_tokens("You are brief.") + 4 + count_tokens(prompt) + 4
    assert usage.completion_tokens == count_tokens(sim_answer(body))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(isinstance(n, int) for n in (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    assert usage.total_time is not None and usage.total_time > 0
    entry = sim.sim.log[-1]
    assert (entry.status, entry.model, entry.fault) == (200, MODEL, None)


def test_images_are_counted_and_marked(make_sim: Callable[..., Running]) -> None:
    url = "data:image/png;base64," + "A" * 100
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in "}, {"type": "image_url", "image_url": {"url": url}}]}]}
    out = make_sim().client().chat.completions.create(**body)
    assert out.choices[0].message.content == f"[{MODEL}] What is in <image:{len(url)} chars>"
    assert out.usage is not None and out.usage.prompt_tokens == count_tokens("What is in ") + 4 + 85


def test_rate_limit_headers_count_requests_per_day(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(rpd=50, tpm=8000)
    client = sim.client()
    raw = client.chat.completions.with_raw_response.create(**request(max_completion_tokens=1000))
    out = raw.parse()
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-limit-tokens"] == "8000"
    # Groq charges what was used: the 1000 reserved for the completion are given back.
    assert out.usage is not None
    used = out.usage.total_tokens
    assert 8000 - used <= int(headers["x-ratelimit-remaining-tokens"]) <= 8000 - used + 20
    assert GO_DURATION.match(headers["x-ratelimit-reset-tokens"])
    assert re.match(r"^23h59m\d+(\.\d+)?s$", headers["x-ratelimit-reset-requests"])
    assert out.x_groq is not None and headers["x-request-id"] == out.x_groq.id
    again = client.chat.completions.with_raw_response.create(**request())
    assert again.headers["x-ratelimit-remaining-requests"] == "48"


def test_max_completion_tokens_truncates(make_sim: Callable[..., Running]) -> None:
    body = request("x" * 400, max_completion_tokens=5)
    out = make_sim().client().chat.completions.create(**body)
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.content == sim_answer(body)[:20]
    assert out.usage is not None and out.usage.completion_tokens == 5


def test_bad_key_is_authentication_error(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(api_key="gsk_right")
    with pytest.raises(groq.AuthenticationError) as info:
        sim.client("gsk_wrong").chat.completions.create(**request())
    assert info.value.body == {"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                         "code": "invalid_api_key"}}
    assert sim.client("gsk_right").chat.completions.create(**request()).choices[0].message.content
    with pytest.raises(groq.AuthenticationError):
        sim.client("gsk_wrong").models.list()


def test_top_k_is_unsupported(make_sim: Callable[..., Running]) -> None:
    with pytest.raises(groq.BadRequestError) as info:
        make_sim().client().chat.completions.create(**request(), extra_body={"top_k": 10})
    assert info.value.body == {"error": {"message": "property 'top_k' is unsupported",
                                         "type": "invalid_request_error"}}


@pytest.mark.parametrize(("params", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"seed": 1.5}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"reasoning_format": "hidden", "include_reasoning": False}, "include_reasoning"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
])
def test_schema_violations_are_400(make_sim: Callable[..., Running], params: dict[str, Any],
                                   param: str) -> None:
    with pytest.raises(groq.BadRequestError) as info:
        make_sim().client().chat.completions.create(**{**request(), **params})
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["param"] == param
    assert info.value.body["error"]["code"] == "invalid_value"


def test_zero_temperature_is_valid(make_sim: Callable[..., Running]) -> None:
    out = make_sim().client().chat.completions.create(**request(temperature=0, top_p=0, seed=0))
    assert out.choices[0].finish_reason == "stop"


def test_unknown_model_is_not_found(make_sim: Callable[..., Running]) -> None:
    with pytest.raises(groq.NotFoundError) as info:
        make_sim().client().chat.completions.create(**{**request(), "model": "llama-9-imaginary"})
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["code"] == "model_not_found"
    assert "`llama-9-imaginary` does not exist" in info.value.body["error"]["message"]


def test_decommissioned_models(make_sim: Callable[..., Running]) -> None:
    client = make_sim().client()
    assert "llama-3.3-70b-versatile" in DECOMMISSIONED and "llama-3.1-8b-instant" in DECOMMISSIONED
    assert set(DECOMMISSIONED.values()) <= set(KNOWN_MODELS)
    for model in DECOMMISSIONED:
        with pytest.raises(groq.BadRequestError) as info:
            client.chat.completions.create(**{**request(), "model": model})
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["code"] == "model_decommissioned"
        assert f"The model `{model}` has been decommissioned" in info.value.body["error"]["message"]


def test_rpm_exhaustion_is_rate_limit_error(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(rpm=2)
    client = sim.client()
    for _ in range(2):
        client.chat.completions.create(**request())
    with pytest.raises(groq.RateLimitError) as info:
        client.chat.completions.create(**request())
    error = info.value
    assert 1 <= int(error.response.headers["retry-after"]) <= 30
    assert error.response.headers["x-ratelimit-remaining-requests"] == "998"  # refused: nothing consumed
    assert isinstance(error.body, dict)
    assert error.body["error"]["type"] == "requests" and error.body["error"]["code"] == "rate_limit_exceeded"
    assert re.match(r"Rate limit reached for model `openai/gpt-oss-20b` in organization `org_sim` service "
                    r"tier `on_demand` on requests per minute \(RPM\): Limit 2, Used 2, Requested 1\. Please "
                    r"try again in \d+(\.\d+)?s\. Need more tokens\?", error.body["error"]["message"])
    assert sim.sim.log[-1].status == 429


def test_small_burst_admits_one_big_request_then_429_on_tpm(make_sim: Callable[..., Running]) -> None:
    # tpm 6000 with 3 s of burst holds 300 tokens; a 1000-token request passes once, into debt.
    # (rpm 600, as 3 s of 30 rpm would hold only 1.5 requests and refuse the second on RPM first.)
    client = make_sim(rpm=600, tpm=6000, burst_s=3.0).client()
    client.chat.completions.create(**request(max_completion_tokens=1000))
    with pytest.raises(groq.RateLimitError) as info:
        client.chat.completions.create(**request(max_completion_tokens=1000))
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "tokens"
    assert "tokens per minute (TPM): Limit 6000" in info.value.body["error"]["message"]


def test_daily_requests_reset_with_the_day(make_sim: Callable[..., Running]) -> None:
    clock = HeldClock(held=True)
    client = make_sim(rpd=1, clock=clock).client()
    client.chat.completions.create(**request())
    with pytest.raises(groq.RateLimitError) as info:
        client.chat.completions.create(**request())
    assert isinstance(info.value.body, dict)
    assert "requests per day (RPD): Limit 1, Used 1, Requested 1" in info.value.body["error"]["message"]
    assert info.value.response.headers["retry-after"] == str(86400)  # the whole day is still to come
    clock.advance(86400)  # the simulated day started when the Simulator was created
    client.chat.completions.create(**request())


def test_a_held_clock_stands_still_moves_by_hand_and_never_goes_back() -> None:
    clock = HeldClock(held=True)
    start = clock()
    assert clock() == start  # held: real time passes, the clock does not
    clock.advance(86400)
    assert clock() == start + 86400
    clock.release()
    released = clock()
    assert released >= start + 86400  # runs on from where it stood, not from real time
    clock.hold()
    held = clock()
    assert held >= released and clock() == held


def test_oversized_request_is_413(make_sim: Callable[..., Running]) -> None:
    with pytest.raises(groq.APIStatusError) as info:
        make_sim(tpm=100).client().chat.completions.create(**request(max_completion_tokens=200))
    assert info.value.status_code == 413
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["message"].startswith("Request too large for model `openai/gpt-oss-20b`")
    assert "Limit 100, Requested 2" in info.value.body["error"]["message"]
    assert info.value.response.headers["x-ratelimit-limit-tokens"] == "100"


def test_models_list(make_sim: Callable[..., Running]) -> None:
    models = make_sim().client().models.list()
    assert {m.id for m in models.data} == set(KNOWN_MODELS)
    first = models.data[0].model_dump()
    assert first["active"] is True and first["context_window"] == 131072
    assert first["max_completion_tokens"] == 65536 and first["object"] == "model"


@pytest.mark.parametrize(("kind", "error", "status"), [
    ("500", groq.InternalServerError, 500),
    ("503", groq.InternalServerError, 503),
    ("502", groq.InternalServerError, 502),
    ("498", groq.APIStatusError, 498),
])
def test_status_faults(make_sim: Callable[..., Running], kind: str, error: type[groq.APIStatusError],
                       status: int) -> None:
    sim = make_sim(fault_rate=1.0, faults=(kind,))
    with pytest.raises(error) as info:
        sim.client().chat.completions.create(**request())
    assert info.value.status_code == status
    if kind == "502":
        assert isinstance(info.value.body, str) and "Bad Gateway" in info.value.body
    else:
        assert isinstance(info.value.body, dict) and info.value.body["error"]["message"]
    if kind == "498":
        assert type(info.value) is groq.APIStatusError  # the SDK has no class for 498 and does not retry it
    assert (sim.sim.log[-1].status, sim.sim.log[-1].fault) == (status, kind)
    # Faults consume no budget: switch them off and the day is still whole.
    sim.sim.config.fault_rate = 0.0
    raw = sim.client().chat.completions.with_raw_response.create(**request())
    assert raw.headers["x-ratelimit-remaining-requests"] == "999"


def test_drop_is_connection_error(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(fault_rate=1.0, faults=("drop",))
    with pytest.raises(groq.APIConnectionError) as info:
        sim.client().chat.completions.create(**request())
    assert not isinstance(info.value, groq.APITimeoutError)
    assert (sim.sim.log[-1].status, sim.sim.log[-1].fault) == (0, "drop")


def test_malformed_json_escapes_the_sdk_as_a_decode_error(make_sim: Callable[..., Running]) -> None:
    # The SDK does not wrap a 200 whose JSON is cut short: json.JSONDecodeError reaches the caller.
    sim = make_sim(fault_rate=1.0, faults=("malformed",))
    with pytest.raises(json.JSONDecodeError):
        sim.client().chat.completions.create(**request())
    assert (sim.sim.log[-1].status, sim.sim.log[-1].fault) == (200, "malformed")
    assert sim.sim.requests_answered(sim.sim.log[-1].body_sha256 or "") == 1  # a 200, however useless


def test_hang_times_out_and_is_logged_as_unanswered(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(fault_rate=1.0, faults=("hang",), hang_s=600.0)  # a 500 would come after the guard
    with pytest.raises(groq.APITimeoutError):
        sim.client(timeout=0.3).chat.completions.create(**request())
    wait_until(lambda: bool(sim.sim.log), "the simulator to see the client gone")
    assert [(e.status, e.fault) for e in sim.sim.log] == [(0, "hang")]


def test_hang_answers_500_to_a_patient_client(make_sim: Callable[..., Running]) -> None:
    sim = make_sim(fault_rate=1.0, faults=("hang",), hang_s=0.2)
    with pytest.raises(groq.InternalServerError):
        sim.client(timeout=5).chat.completions.create(**request())
    assert sim.sim.log[-1].status == 500


def test_faults_are_reproducible_with_a_seed() -> None:
    async def statuses() -> list[int]:
        sim = Simulator(SimConfig(fault_rate=0.5, faults=("500", "503"), seed=42))
        url = await sim.start()
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
            for _ in range(12):
                async with session.post(f"{url}/chat/completions", json=request()) as response:
                    await response.read()
        await sim.stop()
        return [e.status for e in sim.log]

    first, second = asyncio.run(statuses()), asyncio.run(statuses())
    assert first == second and {200, 500, 503} >= set(first) and 200 in first and len(set(first)) > 1


def test_log_hashes_the_exact_body_bytes() -> None:
    raw = b'{"model": "openai/gpt-oss-20b",\n  "messages": [{"role": "user", "content": "caf\\u00e9"}]}'

    async def scenario() -> None:
        sim = Simulator()
        url = await sim.start()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/chat/completions", data=raw,
                                    headers={"Authorization": "Bearer k",
                                             "Content-Type": "application/json"}) as response:
                assert response.status == 200
                assert (await response.json())["choices"][0]["message"]["content"] == f"[{MODEL}] café"
            async with session.post(f"{url}/chat/completions", data=b"{not json",
                                    headers={"Authorization": "Bearer k"}) as response:
                assert response.status == 400
            async with session.post(url.replace("/openai/v1", "/v1") + "/chat/completions", data=raw,
                                    headers={"Authorization": "Bearer k"}) as response:
                assert response.status == 404  # a client posting to /v1/... gets a clear answer
                assert (await response.json())["error"]["code"] == "unknown_url"
        await sim.stop()
        sha = hashlib.sha256(raw).hexdigest()
        assert [(e.status, e.body_sha256) for e in sim.log] == [
            (200, sha), (400, hashlib.sha256(b"{not json").hexdigest())]
        assert sim.requests_answered(sha) == 1

    asyncio.run(scenario())


def testgo_durations() -> None:
    assert [go_duration(s) for s in (0, 0.86, 7.66, 179.56, 432.5, 3723, 3723.5)] == [
        "0s", "860ms", "7.66s", "2m59.56s", "7m12.5s", "1h2m3s", "1h2m3.5s"]


def test_serve_announces_itself_and_runs_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> str:
        task = asyncio.create_task(serve(SimConfig(), "127.0.0.1", 0))
        err = ""
        async with asyncio.timeout(HANG_GUARD_S):
            while "listening" not in err:
                await asyncio.sleep(0.02)
                err += capsys.readouterr().err
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return err + capsys.readouterr().err

    err = asyncio.run(scenario())
    assert re.fullmatch(r"Groq simulator listening on http://127\.0\.0\.1:\d+/openai/v1 \(Ctrl-C to stop\)\n",
                        err)


def test_cli_glue_and_loopback_only() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = ["--rpm", "5", "--faults", "500, drop", "--fault-rate", "0.1"]
    config = config_from_args(parser.parse_args(args))
    assert (config.rpm, config.faults, config.fault_rate, config.tpm) == (5, ("500", "drop"), 0.1, 8000)
    assert parser.parse_args([]).port == 8000
    with pytest.raises(ValueError, match="unknown fault kinds"):
        config_from_args(parser.parse_args(["--faults", "500,explode"]))
    with pytest.raises(ValueError, match="local tests only"):
        asyncio.run(serve(SimConfig(), "0.0.0.0", 0))


def test_stop_does_not_wait_out_a_hang() -> None:
    async def scenario() -> None:
        sim = Simulator(SimConfig(fault_rate=1.0, faults=("hang",), hang_s=300.0))
        url = await sim.start()
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
            pending = asyncio.create_task(session.post(f"{url}/chat/completions", json=request()))
            async with asyncio.timeout(HANG_GUARD_S):  # the hang lasts 300 s: a stop that waits it out fails
                while sim.in_flight == 0:
                    await asyncio.sleep(0.02)
                await sim.stop()
            with pytest.raises(aiohttp.ClientError):
                await pending
        assert [(e.status, e.fault) for e in sim.log] == [(0, "hang")]

    asyncio.run(scenario())


@pytest.mark.parametrize("args, named", [
    (["--fault-rate", "2"], "--fault-rate"), (["--port", "99999"], "--port"),
    (["--latency-ms", "nan"], "--latency-ms"), (["--faults", "500,explode"], "--faults"),
    (["--burst-s", "0"], "--burst-s"), (["--batch-models", "llama-9"], "--batch-models"),
])
def test_simulate_command_refuses_bad_options_in_one_line(args: list[str], named: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "batch", "simulate", "--port", "0", *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr


def test_simulate_command_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "batch", "simulate", "--port", str(port)],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot listen on 127.0.0.1 port {port}" in proc.stderr
