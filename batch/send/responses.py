"""What an OpenAI-compatible server's answers mean: statuses and bodies to typed errors, a 200 body to a
`Completion`, and Groq's rate-limit headers to a `RateInfo`. Pure functions of bytes and headers; the
client calls them at its edge, the Batch API wing on result files.

Groq's facts relied on here (docs/groq.md): the `x-ratelimit-*-requests` headers count requests per
DAY and the `-tokens` ones tokens per MINUTE; resets are Go durations (`7.66s`, `2m59.56s`); a 429
names its limit only in the message (`(TPM)`, `(RPD)`, ...) along with "Please try again in 5.289s".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from batch.errors import (
    ApiError,
    BadRequest,
    FatalApiError,
    ModelUnavailable,
    RateLimited,
    RequestTooLarge,
    ServerError,
    TransportError,
)
from batch.records import Answer, Completion, RateInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_LIMIT_KIND = re.compile(r"\((RPM|TPM|RPD|TPD)\)")
_LIMIT_VALUE = re.compile(r"Limit (\d+)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")
_QUOTED_LOC = re.compile(r"'loc': \('body', ((?:'[^']*'|\d+)(?:, (?:'[^']*'|\d+))*)\)")
_NO_RATE = RateInfo()  # frozen: one shared by every completion whose headers hold no limits


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go duration such as '7.66s', '2m59.56s', '1h2m3s', '450ms', or plain seconds;
    None if unparsable, negative or not finite (a 'NaN' or 'Infinity' must never become a wait)."""
    if not text:
        return None
    text = text.strip()
    try:
        seconds = float(text)  # retry-after and some servers send plain seconds
    except ValueError:
        seconds, pos = 0.0, 0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                return None
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after(h: Mapping[str, str]) -> float | None:
    """The server's wait: `retry-after` in seconds or as an HTTP date, else OpenAI's `retry-after-ms`."""
    value = h.get("retry-after")
    seconds = parse_duration(value)
    if seconds is None and value:
        try:
            seconds = max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError, IndexError):
            seconds = None
    if seconds is None:
        ms = parse_duration(h.get("retry-after-ms"))
        seconds = None if ms is None else ms / 1000.0
    return seconds


def scrubbed(data: Any, raw: bytes) -> Any:
    """`data`, decoded from the JSON `raw`, with each lone UTF-16 surrogate (a `\\udXXX` escape with
    no partner: not a character, and text SQLite and Parquet cannot store) replaced by U+FFFD.
    Looked for only when `raw` holds such an escape at all."""
    return _scrub(data) if b"\\ud" in raw or b"\\uD" in raw else data


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def _int(value: str | None) -> int | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return int(number) if math.isfinite(number) else None


def parse_rate_headers(h: Mapping[str, str]) -> RateInfo:
    # Groq: the -requests headers are per DAY, the -tokens headers per MINUTE.
    return RateInfo(
        requests_limit_day=_int(h.get("x-ratelimit-limit-requests")),
        requests_remaining_day=_int(h.get("x-ratelimit-remaining-requests")),
        requests_reset_s=parse_duration(h.get("x-ratelimit-reset-requests")),
        tokens_limit_minute=_int(h.get("x-ratelimit-limit-tokens")),
        tokens_remaining_minute=_int(h.get("x-ratelimit-remaining-tokens")),
        tokens_reset_s=parse_duration(h.get("x-ratelimit-reset-tokens")),
    )


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """Map a non-200 answer to its error class. The `code` field decides, never message wording,
    except for naming *which* rate limit a 429 hit (Groq says that only in the message), and for the
    request field a server refused (`refused_field`)."""
    message, code, kind_of, param = f"HTTP {status}", None, None, None
    try:
        data = scrubbed(json.loads(body), body)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        code = err.get("code") or None
        kind_of = err.get("type")
        param = refused_field(err.get("param"), message)
    else:
        snippet = body[:200].decode("utf-8", "replace").strip()
        if snippet:
            message = f"HTTP {status}: {snippet}"
        detail = data.get("detail") if isinstance(data, dict) else None  # FastAPI's own 422
        first = detail[0] if isinstance(detail, list) and detail else None
        loc = first.get("loc") if isinstance(first, dict) else None
        if isinstance(loc, list) and len(loc) > 1 and loc[0] == "body":
            param = ".".join(map(str, loc[1:]))
    kw: dict[str, Any] = {"status": status, "code": code, "request_id": headers.get("x-request-id"),
                          "param": param}
    if status == 429:
        found = _LIMIT_KIND.search(message)
        limit = found.group(1).lower() if found else None
        # Groq's body `type` says "requests" or "tokens"; a message naming the other kind of limit is
        # not Groq's wording, and learning a limit from it could throttle the run to a crawl.
        if kind_of in ("requests", "tokens") and limit is not None and kind_of[0] != limit[0]:
            limit = None
        value = _LIMIT_VALUE.search(message) if limit else None
        wait = _TRY_AGAIN.search(message)
        after = retry_after(headers)
        if wait is not None:  # the body's wait is precise; retry-after is rounded up to seconds
            after = max(after or 0.0, parse_duration(wait.group(1)) or 0.0)
        return RateLimited(message, limit=limit, limit_value=float(value.group(1)) if value else None,
                           retry_after=after, **kw)
    if status == 413:
        return RequestTooLarge(message, **kw)
    if code in ("model_not_found", "model_decommissioned"):
        return ModelUnavailable(message, **kw)
    if status in (401, 403):
        return FatalApiError(message, **kw)
    if status == 404:  # no such model or wrong base URL: the same for every row
        return FatalApiError(f"{message} (is the base URL right?)", **kw)
    if status >= 500 and param is not None:  # the server validated the request and refused it
        return BadRequest(message, **kw)
    if status in (408, 409, 498) or status >= 500:
        return ServerError(message, **kw)
    return BadRequest(message, **kw)


def refused_field(param: object, message: str) -> str | None:
    """The request field an error says it refused: OpenAI's and Groq's `param`, else the location of a
    request validation error quoted in the message, as llama-cpp-python's 500 quotes pydantic's error
    list (`'loc': ('body', 'response_format', 'type')`): "response_format.type"."""
    if isinstance(param, str) and param:
        return param
    found = _QUOTED_LOC.search(message)
    return ".".join(p.strip("'") for p in found.group(1).split(", ")) if found else None


def parse_completion(data: Any, headers: Mapping[str, str], *, rate: bool = True) -> Completion:
    """A 200 body as a Completion; raises TransportError if it is not a chat completion. `rate=False`:
    the headers cannot hold rate limits (a Batch API result line), so none are looked for."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        details_in = usage.get("prompt_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or {}
        x_groq = data.get("x_groq") or {}
        return Completion(
            text=message.get("content"),
            reasoning=message.get("reasoning"),
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
            request_id=x_groq.get("id") or headers.get("x-request-id") or data.get("id"),
            input_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"),
            reasoning_tokens=details_out.get("reasoning_tokens"),
            cached_tokens=details_in.get("cached_tokens"),
            queue_time=usage.get("queue_time"),
            total_time=usage.get("total_time"),
            rate=parse_rate_headers(headers) if rate else _NO_RATE,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransportError(f"200 response is not a chat completion ({exc!r})",
                             status=200, request_id=headers.get("x-request-id")) from exc


def textless(answer: Answer) -> Answer:
    """An answer paid for but without text: a reasoning model spent the whole budget thinking. The same
    request would do the same again, so the row fails for good (its usage is kept)."""
    if answer.text is not None and (answer.text or answer.finish_reason != "length"):
        return answer
    return replace(answer, permanent=True, error=(
        f"the model returned no text (finish_reason {answer.finish_reason!r}); with finish_reason "
        "'length' the completion budget ran out first: raise max-new-tokens"))
