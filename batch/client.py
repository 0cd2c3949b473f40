"""The only module that speaks HTTP: one aiohttp session to an OpenAI-compatible chat API.

It posts a request body, and turns whatever comes back — a completion, an HTTP error, a dropped
connection, a timeout, a body that is not JSON — into a `Completion` or one typed `ApiError`,
exactly once, at this edge. It parses usage and Groq's rate-limit headers. It never retries and
never waits: that is `pool`'s and `limits`' business.

The API key is sent only in the Authorization header, only over HTTPS or to a loopback host, and
never copied into an error, a log line or a record.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .config import DEFAULT_BASE_URL
from .errors import (
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
from .records import Completion, RateInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_LIMIT_KIND = re.compile(r"\((RPM|TPM|RPD|TPD)\)")
_LIMIT_VALUE = re.compile(r"Limit (\d+)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """The base URL without a trailing slash; refuses plain HTTP to anything but loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobError(f"base URL {url!r} is not an http(s) URL (e.g. {DEFAULT_BASE_URL})")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise JobError(f"base URL {url!r} uses plain http to a non-loopback host; the API key would "
                       "travel unencrypted. Use https://, or http:// only to localhost/127.0.0.1")
    return url.rstrip("/")


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
    except for naming *which* rate limit a 429 hit: Groq says that only in the message."""
    message, code, kind_of = f"HTTP {status}", None, None
    try:
        err = json.loads(body)["error"]
        message = str(err.get("message") or message)
        code = err.get("code") or None
        kind_of = err.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        snippet = body[:200].decode("utf-8", "replace").strip()
        if snippet:
            message = f"HTTP {status}: {snippet}"
    kw: dict[str, Any] = {"status": status, "code": code, "request_id": headers.get("x-request-id")}
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
    if status in (408, 409, 498) or status >= 500:
        return ServerError(message, **kw)
    return BadRequest(message, **kw)


def parse_completion(data: Any, headers: Mapping[str, str]) -> Completion:
    """A 200 body as a Completion; raises TransportError if it is not a chat completion."""
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
            rate=parse_rate_headers(headers),
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransportError(f"200 response is not a chat completion ({exc!r})",
                             status=200, request_id=headers.get("x-request-id")) from exc


class Client:
    """An OpenAI-compatible chat client on one keep-alive aiohttp session."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float, connections: int) -> None:
        self.base_url = check_base_url(base_url)
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._secret = api_key.encode() if api_key else b""
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                              timeout=self._timeout, raise_for_status=False)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, *, json_body: bool = True,
                    timeout: aiohttp.ClientTimeout | None = None, into: Path | None = None,
                    ) -> tuple[Any, Mapping[str, str]]:
        """One request; the JSON answer (or, with `into`, the body streamed to that file) and the
        headers. Every failure leaves here as one ApiError."""
        assert self._session is not None, "use Client as an async context manager"
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"} if json_body and body is not None else None
        try:
            async with self._session.request(method, url, data=body, headers=headers,
                                             timeout=timeout or self._timeout) as resp:
                headers_in = {k.lower(): v for k, v in resp.headers.items()}
                if resp.status == 200 and into is not None:
                    with into.open("wb") as f:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            f.write(chunk)
                    return None, headers_in
                raw = await resp.read()
                if resp.status != 200:
                    if self._secret:  # a server or proxy that echoes the request must not leak the key
                        raw = raw.replace(self._secret, b"***")
                    raise error_from_response(resp.status, raw, headers_in)
        except ApiError:
            raise
        except TimeoutError as exc:
            limit = (timeout or self._timeout).total
            raise TransportError(f"no answer within {limit:g}s (timed out)") from exc
        except aiohttp.ClientError as exc:
            # str(exc) of aiohttp's errors names the URL and the OS error, never request headers.
            raise TransportError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        try:
            return json.loads(raw), headers_in
        except ValueError as exc:
            raise TransportError("200 response body is not valid JSON", status=200,
                                 request_id=headers_in.get("x-request-id")) from exc

    async def chat(self, body: bytes) -> Completion:
        data, headers = await self._call("POST", "/chat/completions", body)
        return parse_completion(data, headers)

    async def models(self) -> list[dict[str, Any]]:
        data, _ = await self._call("GET", "/models")
        return _listed(data, "models")

    # -- Batch API: files and batches ------------------------------------------------------------
    async def upload_file(self, name: str, path: Path) -> dict[str, Any]:
        """Upload a JSONL file of batch requests (purpose "batch"); Groq's file object."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        with path.open("rb") as f:
            form.add_field("file", f, filename=name, content_type="application/jsonl")
            data, _ = await self._call("POST", "/files", form, json_body=False, timeout=_LONG)
        return _object(data, "file")

    async def list_files(self) -> list[dict[str, Any]]:
        return await self._list_all("/files", "files")

    async def delete_file(self, file_id: str) -> None:
        await self._call("DELETE", f"/files/{_id(file_id)}")

    async def download_file(self, file_id: str, into: Path) -> None:
        """A file's content, streamed to `into` (a batch's output can be large)."""
        await self._call("GET", f"/files/{_id(file_id)}/content", into=into, timeout=_LONG)

    async def create_batch(self, file_id: str, window: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window,
                "metadata": dict(metadata)}
        data, _ = await self._call("POST", "/batches", json.dumps(body).encode())
        return _object(data, "batch")

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        data, _ = await self._call("GET", f"/batches/{_id(batch_id)}")
        return _object(data, "batch")

    async def list_batches(self) -> list[dict[str, Any]]:
        return await self._list_all("/batches", "batches")

    async def _list_all(self, path: str, what: str, *, pages: int = 100) -> list[dict[str, Any]]:
        """Every item of a list. Groq answers with one page; an OpenAI-style server pages with
        `has_more` and `?after=<last id>` (followed for at most `pages` pages)."""
        items: list[dict[str, Any]] = []
        query = ""
        for _ in range(pages):
            data, _ = await self._call("GET", path + query)
            page = _listed(data, what)
            items += page
            last = data.get("last_id") or (page[-1].get("id") if page else None)
            if data.get("has_more") is not True or not isinstance(last, str):
                break
            query = f"?after={_id(last)}"
        return items

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        data, _ = await self._call("POST", f"/batches/{_id(batch_id)}/cancel")
        return _object(data, "batch")


# Uploads and downloads of batch files may be 100 MB: bound the wait for each read, not the whole.
_LONG = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=300)


def _id(value: str) -> str:
    """An id from the server, checked before it goes into a URL path."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", value):
        raise TransportError(f"the server returned an id that is not a plain id: {value[:60]!r}")
    return value


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise TransportError(f"the {what} answer is not an object with an id")
    return data


def _listed(data: Any, what: str) -> list[dict[str, Any]]:
    try:
        return [m for m in data["data"] if isinstance(m, dict)]
    except (KeyError, TypeError) as exc:
        raise TransportError(f"the {what} list is not in the OpenAI shape") from exc
