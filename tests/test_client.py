"""Tests for batch.send.client: durations, Groq's headers and error bodies, base URLs, completions, and a
real `Client` against a tiny aiohttp server on 127.0.0.1 (drops, hangs, bad bodies, the API key)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from batch.errors import (
    ApiError,
    BadRequest,
    FatalApiError,
    JobError,
    ModelUnavailable,
    RateLimited,
    RequestTooLarge,
    ServerError,
    TransportError,
)
from batch.job.endpoint import check_base_url
from batch.send.client import Client
from batch.send.responses import error_from_response, parse_completion, parse_duration, parse_rate_headers

MODEL = "openai/gpt-oss-20b"
KEY = "gsk_TESTKEY_client_0123456789abcdef"


# -- parse_duration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("7.66s", 7.66),
    ("2m59.56s", 179.56),
    ("1h2m3.5s", 3723.5),
    ("450ms", 0.45),
    ("2", 2.0),
    ("0.5", 0.5),
    ("7m12s", 432.0),
    ("1h", 3600.0),
    ("1m0.5s", 60.5),
    (" 3s ", 3.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "garbage", "s", "5x", "1.2.3s", "m5s", "5s garbage", "abc5s",
                                  "nan", "inf", "-1"])
def test_parse_duration_garbage_is_none(text: str | None) -> None:
    assert parse_duration(text) is None


# -- parse_rate_headers ----------------------------------------------------------------------------
def test_parse_rate_headers_groq_table_requests_are_per_day() -> None:
    info = parse_rate_headers({
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-remaining-requests": "14370",
        "x-ratelimit-reset-requests": "2m59.56s",
        "x-ratelimit-limit-tokens": "18000",
        "x-ratelimit-remaining-tokens": "17997",
        "x-ratelimit-reset-tokens": "7.66s",
    })
    assert info.requests_limit_day == 14400
    assert info.requests_remaining_day == 14370
    assert info.requests_reset_s == pytest.approx(179.56)
    assert info.tokens_limit_minute == 18000
    assert info.tokens_remaining_minute == 17997
    assert info.tokens_reset_s == pytest.approx(7.66)


def test_parse_rate_headers_absent_or_garbage_is_none() -> None:
    info = parse_rate_headers({})
    assert info == type(info)()
    info = parse_rate_headers({"x-ratelimit-limit-tokens": "lots", "x-ratelimit-reset-tokens": "soon",
                               "x-ratelimit-limit-requests": "inf", "x-ratelimit-remaining-requests": "nan"})
    assert info.tokens_limit_minute is None
    assert info.tokens_reset_s is None
    assert info.requests_limit_day is None
    assert info.requests_remaining_day is None


# -- error_from_response ---------------------------------------------------------------------------
def groq_error(message: str, type_: str, code: str | None = None, **extra: str) -> bytes:
    err: dict[str, Any] = {"message": message, "type": type_}
    if code:
        err["code"] = code
    err.update(extra)
    return json.dumps({"error": err}).encode()


ORG = f"for model `{MODEL}` in organization `org_01hqx` service tier `on_demand`"
UPGRADE = "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"


def rate_limit_body(what: str, numbers: str, wait: str, type_: str) -> bytes:
    return groq_error(f"Rate limit reached {ORG} on {what}: {numbers}. Please try again in {wait}. {UPGRADE}",
                      type_, "rate_limit_exceeded")


@pytest.mark.parametrize(("what", "type_", "limit", "wait", "seconds"), [
    ("tokens per minute (TPM)", "tokens", "tpm", "5.289s", 5.289),
    ("requests per minute (RPM)", "requests", "rpm", "2s", 2.0),
    ("requests per day (RPD)", "requests", "rpd", "1m26.4s", 86.4),
    ("tokens per day (TPD)", "tokens", "tpd", "7m12s", 432.0),
])
def test_429_names_the_limit_and_the_wait(what: str, type_: str, limit: str, wait: str,
                                          seconds: float) -> None:
    body = rate_limit_body(what, "Limit 15000, Used 11972, Requested 4351", wait, type_)
    exc = error_from_response(429, body, {"x-request-id": "req_429"})
    assert isinstance(exc, RateLimited)
    assert exc.limit == limit
    assert exc.daily == (limit in ("rpd", "tpd"))
    assert exc.retry_after == pytest.approx(seconds)
    assert exc.status == 429
    assert exc.code == "rate_limit_exceeded"
    assert exc.request_id == "req_429"


def test_429_wait_takes_the_longer_of_the_message_and_the_retry_after_header() -> None:
    body = rate_limit_body("tokens per minute (TPM)", "Limit 15000, Used 11972, Requested 4351", "5.289s",
                           "tokens")
    assert error_from_response(429, body, {"retry-after": "2"}).retry_after == pytest.approx(5.289)
    assert error_from_response(429, body, {"retry-after": "9"}).retry_after == pytest.approx(9.0)


def test_429_without_a_wait_in_the_message_uses_retry_after() -> None:
    body = groq_error("Too many requests", "requests", "rate_limit_exceeded")
    exc = error_from_response(429, body, {"retry-after": "3"})
    assert isinstance(exc, RateLimited)
    assert exc.limit is None
    assert exc.retry_after == pytest.approx(3.0)


def test_429_non_json_body_is_still_rate_limited() -> None:
    exc = error_from_response(429, b"slow down", {"retry-after": "1"})
    assert isinstance(exc, RateLimited)
    assert exc.retry_after == pytest.approx(1.0)


def test_413_request_too_large() -> None:
    body = groq_error(f"Request too large {ORG} on tokens per minute (TPM): Limit 8000, Requested 9500, "
                      "please reduce your message size and try again.", "tokens", "rate_limit_exceeded")
    exc = error_from_response(413, body, {})
    assert isinstance(exc, RequestTooLarge)
    assert not isinstance(exc, RateLimited)


def test_401_invalid_api_key_is_fatal_but_not_a_model_problem() -> None:
    body = groq_error("Invalid API Key", "invalid_request_error", "invalid_api_key")
    exc = error_from_response(401, body, {})
    assert isinstance(exc, FatalApiError)
    assert not isinstance(exc, ModelUnavailable)
    assert exc.code == "invalid_api_key"
    assert "Invalid API Key" in str(exc)


def test_404_model_not_found_is_model_unavailable() -> None:
    body = groq_error("The model `llama-9000` does not exist or you do not have access to it.",
                      "invalid_request_error", "model_not_found")
    exc = error_from_response(404, body, {})
    assert isinstance(exc, ModelUnavailable)
    assert "llama-9000" in str(exc)


def test_400_model_decommissioned_is_model_unavailable() -> None:
    body = groq_error("The model `llama3-8b-8192` has been decommissioned and is no longer supported. Please "
                      "refer to https://console.groq.com/docs/deprecations for a recommendation on which "
                      "model to use instead.", "invalid_request_error", "model_decommissioned")
    exc = error_from_response(400, body, {})
    assert isinstance(exc, ModelUnavailable)
    assert exc.status == 400


def test_400_context_length_exceeded_is_a_bad_request_for_this_row() -> None:
    body = groq_error("Please reduce the length of the messages or completion.", "invalid_request_error",
                      "context_length_exceeded", param="messages")
    exc = error_from_response(400, body, {})
    assert type(exc) is BadRequest
    assert exc.code == "context_length_exceeded"


def test_an_error_message_with_a_lone_surrogate_is_storable_text() -> None:
    # The message becomes the row's error, kept in the store: a lone surrogate could not be.
    body = groq_error("bad \\ud800 input", "invalid_request_error", "invalid_value").replace(b"\\\\", b"\\")
    exc = error_from_response(400, body, {})
    assert type(exc) is BadRequest
    assert "bad \ufffd input" in str(exc)
    str(exc).encode("utf-8")


def test_400_json_validate_failed_is_a_bad_request() -> None:
    body = groq_error("Failed to generate JSON. Please adjust your prompt.", "invalid_request_error",
                      "json_validate_failed", failed_generation='{"a": ')
    assert type(error_from_response(400, body, {})) is BadRequest


def test_400_unsupported_property_is_a_bad_request_not_fatal() -> None:
    body = groq_error("property 'top_k' is unsupported", "invalid_request_error")
    assert type(error_from_response(400, body, {})) is BadRequest


def test_498_flex_capacity_is_a_server_error() -> None:
    body = groq_error("Flex tier capacity exceeded. This model is currently experiencing high demand.",
                      "capacity_exceeded", "capacity_exceeded")
    assert isinstance(error_from_response(498, body, {}), ServerError)


def test_500_with_html_body() -> None:
    body = b"<html><head><title>500 Internal Server Error</title></head><body>oops</body></html>"
    exc = error_from_response(500, body, {})
    assert isinstance(exc, ServerError)
    assert exc.status == 500
    assert "500" in str(exc)


def test_503_non_json_body() -> None:
    exc = error_from_response(503, b"upstream connect error or disconnect/reset before headers", {})
    assert isinstance(exc, ServerError)
    assert "upstream connect error" in str(exc)


@pytest.mark.parametrize("status", [502, 504])
def test_other_5xx_are_server_errors(status: int) -> None:
    assert isinstance(error_from_response(status, b"", {}), ServerError)


def test_error_body_shapes_that_are_not_groq_do_not_crash() -> None:
    for body in (b"{}", b"[]", b'{"error": "a string"}', b'{"error": null}', b"\xff\xfe", b"null"):
        exc = error_from_response(400, body, {})
        assert isinstance(exc, BadRequest), body


# -- check_base_url --------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
    ("https://api.groq.com/openai/v1/", "https://api.groq.com/openai/v1"),
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
    ("http://localhost:8000/v1/", "http://localhost:8000/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
])
def test_check_base_url_accepts_https_and_loopback_http(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


@pytest.mark.parametrize("url", [
    "http://example.com/v1",
    "http://10.0.0.5:8080/v1",
    "http://localhost.example.com/v1",
    "http://127.0.0.1@example.com/v1",
    "ftp://127.0.0.1/v1",
    "file:///etc/passwd",
    "api.groq.com/openai/v1",
    "https://",
])
def test_check_base_url_refuses(url: str) -> None:
    with pytest.raises(JobError):
        check_base_url(url)


def test_client_refuses_plain_http_to_a_remote_host() -> None:
    with pytest.raises(JobError):
        Client("http://example.com/openai/v1", KEY, timeout_s=1, connections=1)


# -- parse_completion ------------------------------------------------------------------------------
def groq_completion(content: str | None = "Hello there", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-7f3a", "object": "chat.completion", "created": 1_790_000_000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                             "reasoning": "The user greets me."},
                     "logprobs": None, "finish_reason": finish}],
        "usage": {"queue_time": 0.0213, "prompt_tokens": 80, "prompt_time": 0.004, "completion_tokens": 120,
                  "completion_time": 0.1, "total_tokens": 200, "total_time": 0.104,
                  "prompt_tokens_details": {"cached_tokens": 64},
                  "completion_tokens_details": {"reasoning_tokens": 40}},
        "usage_breakdown": None, "system_fingerprint": "fp_77f3", "x_groq": {"id": "req_01k9xyz"},
        "service_tier": "on_demand",
    }


def test_parse_completion_groq_body() -> None:
    c = parse_completion(groq_completion(), {"x-ratelimit-limit-tokens": "8000", "x-request-id": "req_hdr"})
    assert c.text == "Hello there"
    assert c.reasoning == "The user greets me."
    assert c.finish_reason == "stop"
    assert c.model == MODEL
    assert c.request_id == "req_01k9xyz"  # x_groq.id first
    assert (c.input_tokens, c.output_tokens, c.total_tokens) == (80, 120, 200)
    assert c.cached_tokens == 64
    assert c.reasoning_tokens == 40
    assert c.queue_time == pytest.approx(0.0213)
    assert c.total_time == pytest.approx(0.104)
    assert c.rate.tokens_limit_minute == 8000


def test_parse_completion_null_content_and_length() -> None:
    c = parse_completion(groq_completion(content=None, finish="length"), {})
    assert c.text is None
    assert c.finish_reason == "length"


def test_parse_completion_minimal_openai_compatible_body() -> None:
    body = {"id": "cmpl-1", "choices": [{"message": {"role": "assistant", "content": "hi"},
                                         "finish_reason": "stop"}]}
    c = parse_completion(body, {"x-request-id": "req_from_header"})
    assert c.text == "hi"
    assert c.request_id == "req_from_header"
    assert c.input_tokens is None and c.cached_tokens is None and c.reasoning_tokens is None


@pytest.mark.parametrize("data", [
    None, "a string", 42, [], {}, {"choices": []}, {"choices": None}, {"choices": [None]},
    {"choices": [{"no": "message"}]}, {"choices": [{"message": "text"}]},
    {"choices": [{"message": {"content": "x"}}], "usage": "lots"},
    {"error": {"message": "200 but an error"}},
], ids=repr)
def test_parse_completion_garbage_is_a_transport_error(data: Any) -> None:
    with pytest.raises(TransportError):
        parse_completion(data, {})


# -- a real Client against a real socket -----------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """A tiny aiohttp.web server on 127.0.0.1: one behaviour per path prefix."""

    def __init__(self) -> None:
        self.authorization: list[str | None] = []
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()
        self.url = ""

    async def ok(self, request: web.Request) -> web.StreamResponse:
        self.authorization.append(request.headers.get("Authorization"))
        self.bodies.append(await request.read())
        return web.json_response(groq_completion(), headers={
            "x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14399",
            "x-ratelimit-reset-requests": "6s", "x-ratelimit-limit-tokens": "8000",
            "x-ratelimit-remaining-tokens": "7800", "x-ratelimit-reset-tokens": "1.5s",
            "x-request-id": "req_hdr"})

    async def drop(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.close()  # no status line at all
        await asyncio.sleep(0.05)
        return web.Response()

    async def partial(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"id": "chatcmpl-1", "choices": [')
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-body
        return resp

    async def surrogate(self, request: web.Request) -> web.StreamResponse:
        # A lone surrogate escape: valid JSON, but no character; a paired one is an emoji.
        body = json.dumps(groq_completion()).replace("Hello there", "half \\ud800 whole \\ud83d\\ude00")
        return web.Response(body=body.encode(), content_type="application/json")

    async def hang(self, request: web.Request) -> web.StreamResponse:
        await self.release.wait()
        return web.Response(text="too late")

    async def html(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, text="<html><body>Maintenance</body></html>",
                            content_type="text/html")

    async def unauthorized(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                            "code": "invalid_api_key"}}, status=401)

    async def limited(self, request: web.Request) -> web.StreamResponse:
        body = rate_limit_body("requests per minute (RPM)", "Limit 30, Used 30, Requested 1", "1.5s",
                               "requests")
        return web.Response(status=429, body=body, content_type="application/json",
                            headers={"retry-after": "2"})

    def app(self) -> web.Application:
        app = web.Application()
        for name in ("ok", "drop", "partial", "hang", "html", "unauthorized", "limited", "surrogate"):
            app.router.add_post(f"/{name}/v1/chat/completions", getattr(self, name))
        app.router.add_get("/ok/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "active": True}, "junk"]})


@asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def base(server: Server, name: str) -> str:
    return f"{server.url}/{name}/v1"


def test_client_against_a_real_socket() -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    errors: list[BaseException] = []

    async def expect(url: str, exc_type: type[ApiError], timeout_s: float = 5.0) -> ApiError:
        async with Client(url, KEY, timeout_s=timeout_s, connections=2) as client:
            with pytest.raises(exc_type) as info:
                await client.chat(body)
        errors.append(info.value)
        return info.value

    async def scenario() -> None:
        async with serving() as server:
            async with Client(base(server, "ok") + "/", KEY, timeout_s=5, connections=2) as client:
                c = await client.chat(body)
                assert c.text == "Hello there"
                assert c.total_tokens == 200
                assert c.rate.requests_limit_day == 14400
                assert c.rate.tokens_remaining_minute == 7800
                assert [m["id"] for m in await client.models()] == [MODEL]
            assert server.authorization == [f"Bearer {KEY}"]
            assert server.bodies == [body]  # posted byte for byte

            await expect(base(server, "drop"), TransportError)
            await expect(base(server, "partial"), TransportError)
            loop = asyncio.get_running_loop()
            started = loop.time()
            hung = await expect(base(server, "hang"), TransportError, timeout_s=0.3)
            assert 0.25 <= loop.time() - started < 3.0
            assert "0.3" in str(hung)
            bad = await expect(base(server, "html"), TransportError)
            assert bad.status == 200
            await expect(base(server, "unauthorized"), FatalApiError)
            limited = await expect(base(server, "limited"), RateLimited)
            assert isinstance(limited, RateLimited)
            assert limited.limit == "rpm"
            assert limited.retry_after == pytest.approx(2.0)
        await expect(f"http://127.0.0.1:{_free_port()}/v1", TransportError)  # nobody listening

    asyncio.run(scenario())
    assert len(errors) == 7
    for exc in errors:
        chain: BaseException | None = exc
        while chain is not None:
            assert KEY not in str(chain) and KEY not in repr(chain), type(chain)
            chain = chain.__cause__ or chain.__context__


def test_one_watchdog_cuts_hung_requests_only_and_a_cancel_stays_a_cancel() -> None:
    # Deadlines are kept by one watchdog task, not a timer per request: a hung request ends as a
    # timeout while others on the same session are answered, the task that made it can go on making
    # requests (no stray cancellation left behind), and a task cancelled by its owner (a stop) sees
    # CancelledError, not a timeout.
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'

    async def scenario() -> None:
        async with serving() as server, Client(server.url, KEY, timeout_s=0.4, connections=8) as client:
            async def hung_then_ok() -> str | None:
                with pytest.raises(TransportError, match="timed out"):
                    await client.call("POST", "/hang/v1/chat/completions", body)
                data, _ = await client.call("POST", "/ok/v1/chat/completions", body)
                await asyncio.sleep(0.6)  # past two watchdog rounds: nothing cancels it now
                return str(data["choices"][0]["message"]["content"])

            async def ok() -> str | None:
                data, _ = await client.call("POST", "/ok/v1/chat/completions", body)
                return str(data["choices"][0]["message"]["content"])

            got = await asyncio.gather(hung_then_ok(), *(ok() for _ in range(5)))
            assert got == ["Hello there"] * 6
            stopped = asyncio.ensure_future(client.call("POST", "/hang/v1/chat/completions", body))
            await asyncio.sleep(0.05)
            stopped.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopped

    asyncio.run(scenario())


def test_a_lone_surrogate_in_an_answer_becomes_a_replacement_character() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'

    async def scenario() -> str | None:
        async with serving() as server, Client(base(server, "surrogate"), KEY, timeout_s=5,
                                               connections=1) as client:
            return (await client.chat(body)).text

    assert asyncio.run(scenario()) == "half \ufffd whole \U0001f600"


def test_client_without_a_key_sends_no_authorization() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'

    async def scenario() -> list[str | None]:
        async with serving() as server:
            async with Client(base(server, "ok"), None, timeout_s=5, connections=1) as client:
                await client.chat(body)
            return server.authorization

    assert asyncio.run(scenario()) == [None]


def test_a_server_echoing_the_key_does_not_leak_it_into_the_error() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"Invalid API Key: {auth}", "type": "auth",
                                            "code": "invalid_api_key"}}, status=401)

    async def scenario() -> ApiError:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            async with Client(url, KEY, timeout_s=5, connections=1) as client:
                with pytest.raises(FatalApiError) as info:
                    await client.chat(b"{}")
            return info.value
        finally:
            await runner.cleanup()

    exc = asyncio.run(scenario())
    assert KEY not in str(exc)
    assert KEY not in exc.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
