"""A faithful Groq double on aiohttp.web, for tests, demos and ``--simulate`` runs.

This module owns everything about imitating Groq and nothing else: the ``/openai/v1`` routes
(chat completions, models), Groq's strict request schema (an unknown key is a 400), its error
bodies and codes, its per-model rate limits (RPM/TPM token buckets, RPD/TPD daily counters) with
the ``x-ratelimit-*`` headers and ``retry-after``, the 200 body with usage and timings, and
injectable faults (500/502/503/498, dropped connections, malformed JSON, hangs). Every answer is a
pure function of its request (:func:`sim_answer` echoes the last user message; a request with a JSON
``response_format`` gets :func:`sim_json_answer`, an object that fits the schema's top level), so a
test can prove that each answer landed on its own row. ``Simulator.log`` records every chat request.

The Batch API (``/files`` and ``/batches``: upload a JSONL file of chat requests, watch the batch go
through validating, in_progress, finalizing and completed, or failed, expired, cancelled, and download
the output and error files) lives in :mod:`batch.simbatch`, which builds on this module's schema checks
and answers; ``Simulator.files`` and ``Simulator.batches`` hold its state.

It imports nothing from ``batch`` but its own :mod:`batch.simbatch`: the simulator must stay an
independent witness of the client.
The facts it imitates are in GROQ_API.md; where Groq is uncertain the stricter reading is taken
(e.g. the 413 and the TPM charge count ``max_completion_tokens`` as requested tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

PREFIX = "/openai/v1"
ORG = "org_sim"
UPGRADE = "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
FAULT_KINDS = ("500", "502", "503", "498", "drop", "malformed", "hang")


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /models`` says about an active model."""

    owned_by: str
    created: int
    context_window: int = 131_072
    max_completion_tokens: int = 65_536


KNOWN_MODELS: Mapping[str, ModelInfo] = {
    "openai/gpt-oss-20b": ModelInfo("OpenAI", 1754407957),
    "openai/gpt-oss-120b": ModelInfo("OpenAI", 1754408224),
    "openai/gpt-oss-safeguard-20b": ModelInfo("OpenAI", 1761708789),
    "qwen/qwen3.8-27b": ModelInfo("Alibaba Cloud", 1777000000),
}
_SMALL, _LARGE = "openai/gpt-oss-20b", "openai/gpt-oss-120b"
# Decommissioned id -> suggested replacement: small models to gpt-oss-20b, 70b and up to
# gpt-oss-120b, and the guard model to its successor, the safeguard model.
DECOMMISSIONED: Mapping[str, str] = {
    "llama-3.1-405b-reasoning": _LARGE, "llama-3.1-70b-versatile": _LARGE, "llama-3.3-70b-versatile": _LARGE,
    "llama3-groq-70b-8192-tool-use-preview": _LARGE, "llama3-70b-8192": _LARGE,
    "llama-3.1-8b-instant": _SMALL, "llama3-groq-8b-8192-tool-use-preview": _SMALL, "llama3-8b-8192": _SMALL,
    "mixtral-8x7b-32768": _SMALL, "gemma2-9b-it": _SMALL, "gemma-7b-it": _SMALL,
    "llama-guard-3-8b": "openai/gpt-oss-safeguard-20b",
}


@dataclass
class SimConfig:
    """Knobs of the simulator; limits are per model, like Groq's. Tests may change it at runtime."""

    api_key: str | None = None  # None: any non-empty bearer token is accepted
    rpm: int = 30
    tpm: int = 8000
    rpd: int = 1000
    tpd: int = 200_000
    burst_s: float = 60.0  # seconds of the per-minute budget the buckets hold (60 = Groq's burst)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    hang_s: float = 300.0
    seed: int = 0  # seeds the fault RNG once, when the Simulator is created
    day_s: float = 86400.0  # length of the simulated day for RPD/TPD, short in tests
    # Batch API. A batch keeps the timing knobs it was created with, so its schedule never jumps.
    batch_validate_s: float = 0.2  # real seconds a batch spends in `validating`
    batch_models: tuple[str, ...] | None = None  # models the Batch API takes; None: every known model
    batch_lines_per_s: float = 500.0  # real-time rate at which `in_progress` answers lines
    batch_time_scale: float = 3600.0  # simulated seconds per real second: "24h" lasts 24 s
    batch_finalize_s: float = 0.2  # real seconds in `finalizing`, and in `cancelling`
    batch_fault_rate: float = 0.0  # probability that a batch line gets a 500 instead of an answer

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within 0..1, not {self.fault_rate}")
        if min(self.rpm, self.tpm, self.rpd, self.tpd) < 1 or self.burst_s <= 0 or self.day_s <= 0:
            raise ValueError("rate limits, burst_s and day_s must be positive")
        self._check_batch()

    def _check_batch(self) -> None:
        timings = {"batch_validate_s": self.batch_validate_s, "batch_finalize_s": self.batch_finalize_s,
                   "batch_lines_per_s": self.batch_lines_per_s, "batch_time_scale": self.batch_time_scale}
        for name, value in timings.items():
            # Rate and scale divide the schedule: zero would stall it or make every window end at once.
            positive = name in ("batch_lines_per_s", "batch_time_scale")
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                bound = "above 0" if positive else "of at least 0"
                raise ValueError(f"{name} must be a finite number {bound}, not {value}")
        if not 0.0 <= self.batch_fault_rate <= 1.0:
            raise ValueError(f"batch_fault_rate must be within 0..1, not {self.batch_fault_rate}")
        if self.batch_models is not None:
            self.batch_models = tuple(self.batch_models)
            unknown = sorted(set(self.batch_models) - set(KNOWN_MODELS))
            if unknown:
                raise ValueError(f"unknown batch models {unknown}; choose from {', '.join(KNOWN_MODELS)}")


@dataclass(frozen=True)
class LogEntry:
    """One chat-completions request: when (monotonic), what was answered (0: nothing was)."""

    t: float
    status: int
    body_sha256: str | None
    model: str | None
    fault: str | None
    tokens: int = 0  # what the answer charged (prompt + completion); 0 when nothing was answered


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: about four UTF-8 bytes a token, never zero."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _image_url(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    return url if isinstance(url, str) else ""


def _message_text(message: dict[str, Any], markers: bool) -> str:
    out: list[str] = []
    for part in _parts(message.get("content")):
        if part.get("type") == "text":
            out.append(str(part.get("text", "")))
        elif part.get("type") == "image_url" and markers:
            out.append(f"<image:{len(_image_url(part))} chars>")
    return "".join(out)


def sim_answer(body: dict[str, Any]) -> str:
    """The answer to a request: its model in brackets, then the text of the last user message."""
    messages = body.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(messages, list) else []
    return f"[{body.get('model')}] " + (_message_text(users[-1], markers=True) if users else "")


def _prompt_text(body: dict[str, Any]) -> str:
    return sim_answer(body).split("] ", 1)[1]


def _sample(json_type: str, prompt: str) -> Any:
    """A deterministic value of a JSON type, computed from the prompt."""
    values: dict[str, Any] = {"string": prompt, "integer": len(prompt), "number": len(prompt) / 4,
                              "boolean": len(prompt) % 2 == 0, "object": {}, "array": [], "null": None}
    return values.get(json_type, prompt)


def sim_json_answer(body: dict[str, Any]) -> str:
    """The answer when the request asks for JSON: an object that satisfies the schema's top level.

    For json_schema, every top-level property gets a value of its (first) type: strings are the last
    user message's text, integers its length, numbers a quarter of it, booleans whether it is even.
    For json_object (no schema), the object holds the model and the prompt.
    """
    prompt = _prompt_text(body)
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return json.dumps({"model": body.get("model"), "prompt": prompt}, ensure_ascii=False)
    out: dict[str, Any] = {}
    for name, sub in props.items():
        declared = sub.get("type") if isinstance(sub, dict) else None
        first = declared[0] if isinstance(declared, list) and declared else declared
        out[name] = _sample(first if isinstance(first, str) else "string", prompt)
    return json.dumps(out, ensure_ascii=False)


def _valid_response_format(v: Any) -> bool:
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object", "json_schema"):
        return False
    spec = v.get("json_schema")
    return v["type"] != "json_schema" or (isinstance(spec, dict) and isinstance(spec.get("name"), str)
                                          and isinstance(spec.get("schema", {}), dict))


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens: text tokens + 4 per message + 85 per image part."""
    return sum(count_tokens(_message_text(m, markers=False)) + 4
               + 85 * sum(p.get("type") == "image_url" for p in _parts(m.get("content"))) for m in messages)


def _go_duration(seconds: float) -> str:
    """Go's time.Duration format, as in Groq's headers and messages: 860ms, 7.66s, 7m12.5s, 1h2m3s."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{hours}h{minutes}m{secs}" if hours else f"{minutes}m{secs}" if minutes else secs


class _ApiError(Exception):
    """A Groq-shaped JSON error, raised anywhere in a handler and rendered in one place."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str = "",
                 param: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        error = {"message": message, "type": type_} | ({"code": code} if code else {}) \
            | ({"param": param} if param else {})
        self.status, self.body, self.headers = status, {"error": error}, headers or {}

    def response(self, headers: Mapping[str, str]) -> web.Response:
        # aiohttp knows no reason phrase for 498; give one so the status line is well formed.
        reason = "Capacity Exceeded" if self.status == 498 else None
        headers = {**headers, **self.headers}
        return web.json_response(self.body, status=self.status, reason=reason, headers=headers)


def _invalid(param: str, message: str) -> _ApiError:
    return _ApiError(400, f"'{param}' : {message}", code="invalid_value", param=param)


def _invalid_key() -> _ApiError:
    return _ApiError(401, "Invalid API Key", code="invalid_api_key")


_ALLOWED_KEYS = frozenset((
    "model", "messages", "temperature", "top_p", "max_completion_tokens", "max_tokens", "seed", "stop",
    "user", "response_format", "service_tier", "reasoning_effort", "reasoning_format", "include_reasoning",
    "stream", "n", "frequency_penalty", "presence_penalty", "tools", "tool_choice", "parallel_tool_calls",
    "metadata", "store",
))
_ROLES = ("system", "user", "assistant", "tool")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"value must be one of {', '.join(choices)}"


# Optional parameters: (key, valid?, message when not). A null value counts as not given.
_PARAM_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("temperature", lambda v: _is_number(v) and 0 <= v <= 2, "value must be a number between 0 and 2"),
    ("top_p", lambda v: _is_number(v) and 0 <= v <= 1, "value must be a number between 0 and 1"),
    ("max_completion_tokens", lambda v: _is_int(v) and v >= 1, "value must be an integer of at least 1"),
    ("max_tokens", lambda v: _is_int(v) and v >= 1, "value must be an integer of at least 1"),
    ("seed", _is_int, "value must be an integer"),
    ("user", lambda v: isinstance(v, str), "value must be a string"),
    ("stop", lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) <= 4
                                              and all(isinstance(s, str) for s in v)),
     "value must be a string or an array of at most 4 strings"),
    ("n", lambda v: v == 1, "only n = 1 is supported"),
    ("response_format", _valid_response_format,
     "value must be {type: text | json_object} or {type: json_schema, json_schema: {name, schema, strict}}"),
    ("service_tier", *_one_of("auto", "on_demand", "flex", "performance")),
    ("reasoning_effort", *_one_of("none", "default", "low", "medium", "high")),
    ("reasoning_format", *_one_of("hidden", "raw", "parsed")),
    ("include_reasoning", lambda v: isinstance(v, bool), "value must be a boolean"),
    ("stream", lambda v: v is False, "streaming is not supported by the simulator (Groq supports it)"),
)


def _validate_message(i: int, message: object) -> int:
    """Check one message as Groq's schema does; return how many images it carries."""
    where = f"messages.{i}"
    if not isinstance(message, dict):
        raise _invalid(where, "value must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise _invalid(f"{where}.role", f"value must be one of {', '.join(_ROLES)}")
    content = message.get("content")
    if isinstance(content, str) or (content is None and role == "assistant"):  # None: a tool-call turn
        return 0
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "value must be a string or an array of content parts")
    images = 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url" and role != "user":
            raise _invalid(f"{where}.content.{j}", f"images are only supported in user messages, not {role}")
        if kind == "image_url" and _image_url(part):
            images += 1
            continue
        raise _invalid(f"{where}.content.{j}", "a part is {type: text, text} or {type: image_url, image_url}")
    return images


def _validate(body: object) -> dict[str, Any]:
    """Groq's strict schema: unknown keys, wrong types and ranges are 400s before anything else."""
    if not isinstance(body, dict):
        raise _ApiError(400, "the request body must be a JSON object", code="invalid_value")
    for key in body:
        if key not in _ALLOWED_KEYS:
            raise _ApiError(400, f"property '{key}' is unsupported")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("model", "value must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "minimum number of items is 1")
    if sum(_validate_message(i, m) for i, m in enumerate(messages)) > 5:
        raise _invalid("messages", "at most 5 images are allowed per request")
    given = {k: v for k, v in body.items() if v is not None}  # null means "not given", as in the SDKs
    for key, valid, message in _PARAM_CHECKS:
        if key in given and not valid(given[key]):
            raise _invalid(key, message)
    if "reasoning_format" in given and "include_reasoning" in given:
        raise _invalid("include_reasoning", "cannot be used together with reasoning_format")
    return body


@dataclass
class _Bucket:
    """A token bucket that may go into debt, refilled at limit/60 per second.

    Like Groq, it admits a request once it holds min(requested, capacity) and then charges all of
    it: a request bigger than the burst still passes when the bucket is full, and the debt delays
    whoever comes next. Limit and burst are re-read at each refill, as the config may change.
    """

    level: float
    stamp: float
    limit: int = 1
    burst_s: float = 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.limit * self.burst_s / 60.0)

    def refill(self, now: float, limit: int, burst_s: float) -> None:
        self.limit, self.burst_s = limit, burst_s
        self.level = min(self.capacity, self.level + (now - self.stamp) * limit / 60.0)
        self.stamp = now

    def wait(self, amount: int) -> float:
        """Seconds until `amount` is admitted; 0 if it is admitted now."""
        return max(0.0, (min(amount, self.capacity) - self.level) * 60.0 / self.limit)

    def used(self) -> int:
        return max(0, self.limit - math.floor(self.level))


class _Budget:
    """One model's limits: RPM and TPM buckets, RPD and TPD counters for the current day."""

    def __init__(self, now: float) -> None:
        # Start full: the first refill clamps the infinite level to the capacity.
        self.rpm, self.tpm = _Bucket(math.inf, now), _Bucket(math.inf, now)
        self.day, self.day_left, self.requests, self.tokens = -1, 0.0, 0, 0

    def sync(self, cfg: SimConfig, now: float, epoch: float) -> None:
        self.rpm.refill(now, cfg.rpm, cfg.burst_s)
        self.tpm.refill(now, cfg.tpm, cfg.burst_s)
        day = int((now - epoch) // cfg.day_s)
        if day != self.day:  # a new simulated day: the daily budgets start over
            self.day, self.requests, self.tokens = day, 0, 0
        self.day_left = epoch + (day + 1) * cfg.day_s - now

    def admit(self, cfg: SimConfig, model: str, requested: int) -> None:
        """Charge one request of `requested` tokens, or raise the 413/429 Groq would send."""
        head = f"for model `{model}` in organization `{ORG}` service tier `on_demand` on"
        if requested > cfg.tpm:  # no wait can help: 413, not 429
            raise _ApiError(413, f"Request too large {head} tokens per minute (TPM): Limit {cfg.tpm}, "
                            f"Requested {requested}, please reduce your message size and try again. "
                            f"{UPGRADE}", type_="tokens", code="rate_limit_exceeded")
        day_over = self.day_left if self.requests + 1 > cfg.rpd else 0.0
        tokens_over = self.day_left if self.tokens + requested > cfg.tpd else 0.0
        # Groq's order; a refused request consumes nothing.
        for what, type_, limit, used, asked, wait in (
            ("requests per day (RPD)", "requests", cfg.rpd, self.requests, 1, day_over),
            ("tokens per day (TPD)", "tokens", cfg.tpd, self.tokens, requested, tokens_over),
            ("requests per minute (RPM)", "requests", cfg.rpm, self.rpm.used(), 1, self.rpm.wait(1)),
            ("tokens per minute (TPM)", "tokens", cfg.tpm, self.tpm.used(), requested,
             self.tpm.wait(requested)),
        ):
            if wait > 0:
                retry = {"retry-after": str(max(1, math.ceil(wait)))}
                raise _ApiError(429, f"Rate limit reached {head} {what}: Limit {limit}, Used {used}, "
                                f"Requested {asked}. Please try again in {_go_duration(wait)}. {UPGRADE}",
                                type_=type_, code="rate_limit_exceeded", headers=retry)
        self.rpm.level -= 1
        self.requests += 1
        self.charge(requested)

    def charge(self, tokens: int) -> None:
        """Take tokens from the minute and day budgets (negative: give back what was not used)."""
        self.tpm.level -= tokens
        self.tokens += tokens

    def headers(self, cfg: SimConfig) -> dict[str, str]:
        # The trap, as on Groq: the -requests headers are per DAY, the -tokens ones per minute.
        return {
            "x-ratelimit-limit-requests": str(cfg.rpd),
            "x-ratelimit-remaining-requests": str(max(0, cfg.rpd - self.requests)),
            "x-ratelimit-reset-requests": _go_duration(self.day_left),
            "x-ratelimit-limit-tokens": str(cfg.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.tpm.level))),
            "x-ratelimit-reset-tokens": _go_duration((self.tpm.capacity - self.tpm.level) * 60.0 / cfg.tpm),
        }


_FAULT_ERRORS = {
    "500": (500, "Internal Server Error", "internal_server_error", ""),
    "503": (503, "Service Unavailable", "service_unavailable", ""),
    "498": (498, "Capacity exceeded for flex tier. Please try again later or use the on_demand service tier.",
            "capacity_exceeded", "capacity_exceeded"),
}
_BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
                "Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n")


def _size_up(body: dict[str, Any]) -> tuple[str, int | None, int, int]:
    """Check the model and the request's size; return model, completion cap, prompt and requested tokens."""
    model: str = body["model"]
    if model in DECOMMISSIONED:
        raise _ApiError(400, f"The model `{model}` has been decommissioned and is no longer supported. "
                        "Please refer to https://console.groq.com/docs/deprecations for a recommendation on "
                        "which model to use instead.", code="model_decommissioned")
    info = KNOWN_MODELS.get(model)
    if info is None:
        raise _ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                        code="model_not_found")
    cap_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    cap: int | None = body.get(cap_key)
    if cap is not None and cap > info.max_completion_tokens:
        raise _invalid(cap_key, f"must be at most {info.max_completion_tokens} for this model")
    prompt = count_prompt_tokens(body["messages"])
    requested = prompt + (cap or 0)  # what the rate limits reserve until the real usage is known
    if requested > info.context_window:
        raise _ApiError(400, f"This model's maximum context length is {info.context_window} tokens. However, "
                        f"you requested {requested} tokens ({prompt} in the messages, {cap or 0} in the "
                        "completion). Please reduce the length of the messages or completion.",
                        code="context_length_exceeded", param="messages")
    return model, cap, prompt, requested


def _answer(body: dict[str, Any], cap: int | None) -> tuple[str, int, str]:
    """The answer's text, completion tokens and finish reason, cut short at the cap as Groq does."""
    kind = (body.get("response_format") or {}).get("type")
    text = sim_json_answer(body) if kind in ("json_object", "json_schema") else sim_answer(body)
    completion = count_tokens(text)
    if cap is None or completion <= cap:
        return text, completion, "stop"
    # Cut to the cap's worth of bytes; "ignore" drops a character split by the cut.
    return text.encode()[: 4 * cap].decode("utf-8", "ignore"), cap, "length"


def _usage(model: str, prompt: int, completion: int, queue_time: float, elapsed: float) -> dict[str, Any]:
    """Groq's usage block; its times are seconds, consistent with the latency actually spent."""
    prompt_time = prompt / 50_000  # prefill is fast; the rest of the latency is decoding
    completion_time = max(elapsed - prompt_time, completion / 1000)
    usage: dict[str, Any] = {
        "queue_time": round(queue_time, 6), "prompt_tokens": prompt, "prompt_time": round(prompt_time, 6),
        "completion_tokens": completion, "completion_time": round(completion_time, 6),
        "total_tokens": prompt + completion, "total_time": round(prompt_time + completion_time, 6),
    }
    if model.startswith("openai/gpt-oss"):  # reasoning models report it; the double does not reason
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
    return usage


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise _ApiError(400, "We could not parse the JSON body of your request. The body must be valid "
                        "JSON.", code="invalid_json") from None


def _chat_completion(model: str, text: str, finish: str, usage: dict[str, Any], request_id: str,
                     created: int) -> dict[str, Any]:
    """The 200 body of a chat completion; the Batch API wraps the very same body in its output lines."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
        "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": None, "finish_reason": finish}],
        "usage": usage, "system_fingerprint": "fp_sim", "x_groq": {"id": request_id},
        "service_tier": "on_demand",
    }


def _model_object(model: str) -> dict[str, Any]:
    info = KNOWN_MODELS[model]
    return {"id": model, "object": "model", "created": info.created, "owned_by": info.owned_by,
            "active": True, "context_window": info.context_window, "public_apps": None,
            "max_completion_tokens": info.max_completion_tokens}


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _require_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to listen on {host!r}: the Groq simulator is for local tests only "
                         "(use 127.0.0.1, ::1 or localhost)")


class Simulator:
    """The Groq double: `await start()` for a base URL, `await stop()` when done, `log` to inspect."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.log: list[LogEntry] = []
        # Groq takes base64 images up to 4 MB a request: aiohttp's default 1 MB cap would be a wrong 413.
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self.app.router.add_get(f"{PREFIX}/models", self._models)
        self.app.router.add_post(f"{PREFIX}/chat/completions", self._chat)
        # Imported here, not at the top: simbatch builds on this module, which must be fully loaded first.
        from .simbatch import BatchApi

        self.batch_api = BatchApi(lambda: self.config, self._authorized)
        self.batch_api.add_routes(self.app.router, PREFIX)  # before the catch-all below, which would win
        self.files, self.batches = self.batch_api.files, self.batch_api.batches
        self.app.router.add_route("*", "/{tail:.*}", self._unknown_url)  # e.g. a client that posts to /v1
        # Separate streams, so that turning jitter on does not change which requests get faults.
        self._fault_rng = random.Random(self.config.seed)
        self._jitter_rng = random.Random(self.config.seed + 1)
        self._epoch = time.monotonic()
        self._budgets: dict[str, _Budget] = {}
        self._runner: web.AppRunner | None = None
        self._stopping = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on a loopback address (port 0: any free one); return the OpenAI-style base URL."""
        _require_loopback(host)
        self._stopping = False
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}{PREFIX}"

    async def stop(self) -> None:
        self._stopping = True  # hung and sleeping handlers notice within 50 ms and give up
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def uploads(self) -> int:
        """How many files were uploaded through ``POST /files`` (batch output files not included)."""
        return self.batch_api.uploads

    @property
    def batches_created(self) -> int:
        """How many batches ``POST /batches`` created."""
        return self.batch_api.batches_created

    def requests_answered(self, sha: str) -> int:
        """How many 200s were sent for a request body with this sha256."""
        return sum(e.status == 200 and e.body_sha256 == sha for e in self.log)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return scheme.lower() == "bearer" and bool(token) and self.config.api_key in (None, token)

    def _budget(self, model: str) -> _Budget:
        now = time.monotonic()
        budget = self._budgets.setdefault(model, _Budget(now))
        budget.sync(self.config, now, self._epoch)
        return budget

    async def _wait(self, request: web.Request, seconds: float) -> bool:
        """Sleep unless the client leaves or the simulator stops; False then, as nobody will read
        the answer. aiohttp does not cancel a handler when its client disconnects, hence the polling."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping or _gone(request):
                return False
            await asyncio.sleep(min(left, 0.05))
        return not _gone(request)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _invalid_key().response({})
        return web.json_response({"object": "list", "data": [_model_object(m) for m in KNOWN_MODELS]})

    async def _unknown_url(self, request: web.Request) -> web.Response:
        message = (f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos, "
                   "or see the docs at https://console.groq.com/docs/")
        return _ApiError(404, message, code="unknown_url").response({})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        raw = await request.read()
        request_id = "req_" + uuid.uuid4().hex[:26]
        trace: dict[str, str] = {}  # model and fault, as far as the handler got
        try:
            response = await self._complete(request, raw, received, request_id, trace)
        except _ApiError as err:
            # Past auth, the model's rate-limit headers go on every answer, errors included.
            model = trace.get("model", "")
            limits = self._budget(model).headers(self.config) if model in KNOWN_MODELS else {}
            response = err.response(limits and {**limits, "x-request-id": request_id})
        status = 0 if response is None else response.status
        if response is None:  # drop, or the client left: close without sending a byte
            if request.transport is not None:
                request.transport.close()
            response = web.Response()
        digest = hashlib.sha256(raw).hexdigest()
        self.log.append(LogEntry(received, status, digest, trace.get("model"), trace.get("fault"),
                                 int(trace.get("tokens", 0)) if status == 200 else 0))
        return response

    async def _complete(self, request: web.Request, raw: bytes, received: float, request_id: str,
                        trace: dict[str, str]) -> web.Response | None:
        cfg = self.config
        if not self._authorized(request):
            raise _invalid_key()
        if cfg.fault_rate > 0 and cfg.faults and self._fault_rng.random() < cfg.fault_rate:
            trace["fault"] = self._fault_rng.choice(cfg.faults)
            return await self._fault(request, trace["fault"])  # before parsing: faults cost no budget
        parsed = _parse_json(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            trace["model"] = parsed["model"]
        body = _validate(parsed)
        model, cap, prompt, requested = _size_up(body)
        self._budget(model).admit(cfg, model, requested)
        admitted = time.monotonic()
        jitter = self._jitter_rng.uniform(0, cfg.jitter_ms) if cfg.jitter_ms > 0 else 0.0
        if not await self._wait(request, (cfg.latency_ms + jitter) / 1000):
            return None
        text, completion, finish = _answer(body, cap)
        budget = self._budget(model)
        budget.charge(prompt + completion - requested)  # Groq charges what was used, not what was asked
        trace["tokens"] = str(prompt + completion)
        usage = _usage(model, prompt, completion, admitted - received, time.monotonic() - admitted)
        return web.json_response(_chat_completion(model, text, finish, usage, request_id, int(time.time())),
                                 headers={**budget.headers(cfg), "x-request-id": request_id})

    async def _fault(self, request: web.Request, kind: str) -> web.Response | None:
        if kind == "drop":
            return None
        if kind == "hang":  # the client should time out first; one that waits gets a 500
            if not await self._wait(request, self.config.hang_s):
                return None
            kind = "500"
        if kind == "502":  # Groq's edge proxy answers HTML, not JSON
            return web.Response(status=502, text=_BAD_GATEWAY, content_type="text/html")
        if kind == "malformed":
            choice = {"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}
            whole = json.dumps({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                                "choices": [choice]})
            return web.Response(status=200, text=whole[: len(whole) // 2], content_type="application/json")
        status, message, type_, code = _FAULT_ERRORS[kind]
        raise _ApiError(status, message, type_=type_, code=code)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` command's options; the defaults are SimConfig's."""
    d = SimConfig()
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--api-key", default=None, help="require this key (default: any non-empty key)")
    options: tuple[tuple[str, type[int] | type[float], float, str], ...] = (
        ("--rpm", int, d.rpm, "requests per minute, per model"),
        ("--tpm", int, d.tpm, "tokens per minute, per model"),
        ("--rpd", int, d.rpd, "requests per day, per model"),
        ("--tpd", int, d.tpd, "tokens per day, per model"),
        ("--burst-s", float, d.burst_s, "seconds of the minute budget usable at once (60 = Groq)"),
        ("--latency-ms", float, d.latency_ms, "delay before each answer"),
        ("--jitter-ms", float, d.jitter_ms, "extra uniform random delay"),
        ("--fault-rate", float, d.fault_rate, "probability that a request gets a fault"),
        ("--hang-s", float, d.hang_s, "how long a 'hang' fault holds the request"),
        ("--seed", int, d.seed, "seed of the fault RNG (and of the Batch API's order and faults)"),
        ("--batch-validate-s", float, d.batch_validate_s, "seconds a batch spends validating"),
        ("--batch-lines-per-s", float, d.batch_lines_per_s, "batch lines answered per second"),
        ("--batch-time-scale", float, d.batch_time_scale,
         "simulated seconds per real second of a batch's completion window (3600: 24h lasts 24 s)"),
        ("--batch-finalize-s", float, d.batch_finalize_s, "seconds a batch spends finalizing or cancelling"),
        ("--batch-fault-rate", float, d.batch_fault_rate, "probability that a batch line gets a 500"),
    )
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument("--faults", default=",".join(d.faults), help="fault kinds (default %(default)s)")
    parser.add_argument("--batch-models", default=None,
                        help="comma-separated models the Batch API accepts (default: every known model)")


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """A SimConfig from options parsed by `add_cli_arguments`; ValueError if they are invalid."""
    return SimConfig(
        api_key=ns.api_key, rpm=ns.rpm, tpm=ns.tpm, rpd=ns.rpd, tpd=ns.tpd, burst_s=ns.burst_s,
        latency_ms=ns.latency_ms, jitter_ms=ns.jitter_ms, fault_rate=ns.fault_rate,
        faults=tuple(k.strip() for k in ns.faults.split(",") if k.strip()), hang_s=ns.hang_s, seed=ns.seed,
        batch_validate_s=ns.batch_validate_s, batch_lines_per_s=ns.batch_lines_per_s,
        batch_time_scale=ns.batch_time_scale, batch_finalize_s=ns.batch_finalize_s,
        batch_fault_rate=ns.batch_fault_rate,
        batch_models=None if ns.batch_models is None
        else tuple(m.strip() for m in ns.batch_models.split(",") if m.strip()),
    )


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Run the simulator as a server until cancelled (Ctrl-C)."""
    sim = Simulator(config)
    url = await sim.start(host, port)
    print(f"Groq simulator listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
