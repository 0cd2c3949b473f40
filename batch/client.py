"""The only module that speaks HTTP: one aiohttp session to an OpenAI-compatible API.

It sends a request and turns whatever comes back (a completion, an HTTP error, a dropped connection,
a timeout, a body that is not JSON) into a value or one typed `ApiError`, exactly once, at this edge
(what statuses and bodies mean is `responses`' business). It never retries and never waits: that is
`pool`'s and `limits`' business. The Batch API's files and batches endpoints are spelled out in
`batchapi.endpoints`, on the generic `call`, `upload` and `download` here.

The API key is sent only in the Authorization header, only over HTTPS or to a loopback host, and
never copied into an error, a log line or a record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .endpoint import check_base_url
from .errors import ApiError, TransportError
from .records import Completion
from .responses import error_from_response, parse_completion

# Uploads and downloads of batch files may be 100 MB: bound the wait for each read, not the whole.
LONG = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=300)


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

    async def call(self, method: str, path: str, body: Any = None, *, json_body: bool = True,
                    long: bool = False, into: Path | None = None,
                    ) -> tuple[Any, Mapping[str, str]]:
        """One request; the JSON answer (or, with `into`, the body streamed to that file) and the
        headers. Every failure leaves here as one ApiError."""
        assert self._session is not None, "use Client as an async context manager"
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"} if json_body and body is not None else None
        try:
            async with self._session.request(method, url, data=body, headers=headers,
                                             timeout=LONG if long else self._timeout) as resp:
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
            limit = (LONG if long else self._timeout).total
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
        data, headers = await self.call("POST", "/chat/completions", body)
        return parse_completion(data, headers)

    async def models(self) -> list[dict[str, Any]]:
        data, _ = await self.call("GET", "/models")
        return listed(data, "models")

    async def upload(self, path: str, fields: Mapping[str, str], name: str, file: Path) -> Any:
        """POST a multipart form: `fields`, then `file` under the form name "file" as `name`."""
        form = aiohttp.FormData()
        for k, v in fields.items():
            form.add_field(k, v)
        with file.open("rb") as f:
            form.add_field("file", f, filename=name, content_type="application/jsonl")
            data, _ = await self.call("POST", path, form, json_body=False, long=True)
        return data

    async def download(self, path: str, into: Path) -> None:
        """GET a body of any size, streamed to `into`."""
        await self.call("GET", path, into=into, long=True)


def plain_id(value: str) -> str:
    """An id from the server, checked before it goes into a URL path."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", value):
        raise TransportError(f"the server returned an id that is not a plain id: {value[:60]!r}")
    return value


def single(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise TransportError(f"the {what} answer is not an object with an id")
    return data


def listed(data: Any, what: str) -> list[dict[str, Any]]:
    try:
        return [m for m in data["data"] if isinstance(m, dict)]
    except (KeyError, TypeError) as exc:
        raise TransportError(f"the {what} list is not in the OpenAI shape") from exc
