"""The simulator's request schema: what Groq accepts in a chat-completions body, and its error shape.

This module owns Groq's strict schema and nothing else: the allowed top-level keys (an unknown key is
a 400), the roles, the content parts of a message (text, and images only in user messages, at most 5
a request), the type and range of each optional parameter, the reasoning rules between parameters
(gpt-oss refuses `reasoning_format`; `raw` refuses JSON mode), and the JSON body parse. It also owns the
Groq-shaped error (:class:`HttpError`, rendered as ``{"error": {message, type, code, param}}``) that
every simulator module raises, with its two most common cases, :func:`invalid` and
:func:`invalid_key`. The Batch API checks each line's body with the very same :func:`validate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web


class HttpError(Exception):
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


def invalid(param: str, message: str) -> HttpError:
    return HttpError(400, f"'{param}' : {message}", code="invalid_value", param=param)


def invalid_key() -> HttpError:
    return HttpError(401, "Invalid API Key", code="invalid_api_key")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise HttpError(400, "We could not parse the JSON body of your request. The body must be valid "
                       "JSON.", code="invalid_json") from None


def image_url(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    return url if isinstance(url, str) else ""


def _valid_response_format(v: Any) -> bool:
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object", "json_schema"):
        return False
    spec = v.get("json_schema")
    return v["type"] != "json_schema" or (isinstance(spec, dict) and isinstance(spec.get("name"), str)
                                          and isinstance(spec.get("schema", {}), dict))


_ALLOWED_KEYS = frozenset((
    "model", "messages", "temperature", "top_p", "max_completion_tokens", "max_tokens", "seed", "stop",
    "user", "response_format", "service_tier", "reasoning_effort", "reasoning_format", "include_reasoning",
    "stream", "n", "frequency_penalty", "presence_penalty", "tools", "tool_choice", "parallel_tool_calls",
    "metadata", "store",
))
_ROLES = ("system", "user", "assistant", "tool")
GPT_OSS = "openai/gpt-oss"  # the family that takes include_reasoning and refuses reasoning_format
JSON_MODES = ("json_object", "json_schema")


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
        raise invalid(where, "value must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise invalid(f"{where}.role", f"value must be one of {', '.join(_ROLES)}")
    content = message.get("content")
    if isinstance(content, str) or (content is None and role == "assistant"):  # None: a tool-call turn
        return 0
    if not isinstance(content, list):
        raise invalid(f"{where}.content", "value must be a string or an array of content parts")
    images = 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url" and role != "user":
            raise invalid(f"{where}.content.{j}", f"images are only supported in user messages, not {role}")
        if kind == "image_url" and image_url(part):
            images += 1
            continue
        raise invalid(f"{where}.content.{j}", "a part is {type: text, text} or {type: image_url, image_url}")
    return images


def validate(body: object) -> dict[str, Any]:
    """Groq's strict schema: unknown keys, wrong types and ranges are 400s before anything else."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", code="invalid_value")
    for key in body:
        if key not in _ALLOWED_KEYS:
            raise HttpError(400, f"property '{key}' is unsupported")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("model", "value must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "minimum number of items is 1")
    if sum(_validate_message(i, m) for i, m in enumerate(messages)) > 5:
        raise invalid("messages", "at most 5 images are allowed per request")
    given = {k: v for k, v in body.items() if v is not None}  # null means "not given", as in the SDKs
    for key, valid, message in _PARAM_CHECKS:
        if key in given and not valid(given[key]):
            raise invalid(key, message)
    if "reasoning_format" in given and "include_reasoning" in given:
        raise invalid("include_reasoning", "cannot be used together with reasoning_format")
    _check_reasoning(body["model"], given)
    return body


def _check_reasoning(model: str, given: Mapping[str, Any]) -> None:
    """Groq's reasoning page: the gpt-oss models take `include_reasoning`, not `reasoning_format`; and
    `raw` reasoning with JSON mode is a 400. (The messages are the simulator's; Groq's are unknown.)"""
    fmt, response_format = given.get("reasoning_format"), given.get("response_format")
    if fmt is not None and model.startswith(GPT_OSS):
        raise invalid("reasoning_format", f"is not supported with {model}; use include_reasoning")
    if fmt == "raw" and isinstance(response_format, dict) and response_format.get("type") in JSON_MODES:
        raise invalid("reasoning_format", "raw is not supported with JSON mode or tool use; use parsed "
                      "or hidden")
