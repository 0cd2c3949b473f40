"""The only module that speaks HTTP: one aiohttp session to an OpenAI-compatible API.

It sends a request and turns whatever comes back (a completion, an HTTP error, a dropped connection,
a timeout, a body that is not JSON) into a value or one typed `ApiError`, exactly once, at this edge
(what statuses and bodies mean is `responses`' business). It never retries and never waits: that is
`pool`'s and `limits`' business. The Batch API's files and batches endpoints are spelled out in
`batchapi.endpoints`, on the generic `call`, `upload` and `download` here.

The API key is sent only in the Authorization header, only over HTTPS or to a loopback host, only to
the base URL's own origin (a redirect elsewhere is followed without it, and only for a GET), and
never copied into an error, a log line or a record.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from batch.errors import ApiError, FatalApiError, TransportError
from batch.job.endpoint import check_base_url, is_loopback
from batch.records import Completion
from batch.send.responses import error_from_response, parse_completion, scrubbed

if TYPE_CHECKING:
    import aiohttp

# Uploads and downloads of batch files may be 100 MB: bound the wait for each read, not the whole.
LONG_READ_S = 300.0
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MIN_SECRET = 8  # characters: a shorter key is a placeholder (local servers take any), not a secret


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https"
                                                                          else 80)


class Client:
    """An OpenAI-compatible chat client on one keep-alive aiohttp session."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float, connections: int) -> None:
        self.base_url = check_base_url(base_url)
        self._origin = _origin(self.base_url)
        self._own = self.base_url.rstrip("/") + "/"
        # Not a session default: the key goes only to the base URL's own origin (see `_headers_for`).
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A key short enough to be a word ("x", for a local server that takes any) is no secret, and
        # blotting it out of messages would mangle them ("'te***t'"); a real key is blotted wherever it is.
        self._secret = api_key.encode() if api_key and len(api_key) >= MIN_SECRET else b""
        self._timeout_s = timeout_s
        self._connections = connections
        self._entered = False
        # Chat requests' deadlines, kept by one watchdog (`_watch`) rather than a timer each: arming
        # and disarming aiohttp's per-request timer was about 5 us of the loop's time per request.
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._entered = True  # the session opens with the first request (`_open`)
        return self

    def _open(self) -> aiohttp.ClientSession:
        # aiohttp is loaded here, not when batch starts: a run whose every row is answered already
        # sends nothing and never pays for it (about 0.1 s, most of it building TLS contexts).
        import aiohttp

        self._short = aiohttp.ClientTimeout(total=None)  # the deadline is `_watch`'s
        self._long = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=LONG_READ_S)
        self._client_error = aiohttp.ClientError
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
        self._session = aiohttp.ClientSession(connector=connector, headers={"Accept": "application/json"},
                                              timeout=self._short, raise_for_status=False)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return self._session

    async def _watch(self) -> None:
        """Cancel every request still unanswered at its deadline (at most a quarter of the timeout,
        and never more than a second, late); `call` turns that cancellation into a timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: Any = None, *, json_body: bool = True,
                    long: bool = False, into: Path | None = None,
                    ) -> tuple[Any, Mapping[str, str]]:
        """One request; the JSON answer (or, with `into`, the body streamed to that file) and the
        headers. Every failure leaves here as one ApiError."""
        assert self._entered, "use Client as an async context manager"
        session = self._session or self._open()
        url = f"{self.base_url}{path}"
        content = {"Content-Type": "application/json"} if json_body and body is not None else {}
        task = None if long else asyncio.current_task()
        if task is not None:
            self._deadlines[task] = asyncio.get_running_loop().time() + self._timeout_s
        try:
            for _ in range(MAX_REDIRECTS + 1):
                # Redirects are followed here, not by aiohttp, so that the key never follows one to
                # another origin, and a request that carries data is never silently re-sent elsewhere.
                async with session.request(method, url, data=body, headers={
                        **content, **self._headers_for(url)}, allow_redirects=False,
                        timeout=self._long if long else self._short) as resp:
                    headers_in = resp.headers  # read with lower-case names; its look-ups ignore case
                    if resp.status in REDIRECTS:
                        url = self._redirect(method, url, resp.status, headers_in.get("location"))
                        continue
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
                    break
            else:
                raise FatalApiError(f"{method} {path}: more than {MAX_REDIRECTS} redirects")
        except ApiError:
            raise
        except asyncio.CancelledError:
            # The watchdog's and nobody else's (a stop cancels too): a timeout; else still cancelled.
            if task is not None and task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:
                    raise _timed_out(self._timeout_s) from None
            raise
        except TimeoutError as exc:
            raise _timed_out(LONG_READ_S if long else self._timeout_s) from exc
        except self._client_error as exc:
            # str(exc) of aiohttp's errors names the URL and the OS error, never request headers.
            raise TransportError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if task is not None:
                del self._deadlines[task]
                if task in self._expired:  # cancelled just as it ended: take the cancellation back
                    self._expired.discard(task)
                    task.uncancel()
        try:
            return scrubbed(json.loads(raw), raw), headers_in
        except ValueError as exc:
            raise TransportError("200 response body is not valid JSON", status=200,
                                 request_id=headers_in.get("x-request-id")) from exc

    def _headers_for(self, url: str) -> dict[str, str]:
        if url.startswith(self._own):  # the base URL's own paths: no parsing on every request
            return self._auth
        return self._auth if _origin(url) == self._origin else {}

    def _redirect(self, method: str, url: str, status: int, location: str | None) -> str:
        """Where a redirect of `url` may be followed to; FatalApiError when it may not: a request that
        carries data (it would be re-sent, or turned into a GET), or a target that is not HTTPS (nor
        loopback). The key goes along only to the base URL's own origin (`_headers_for`)."""
        target = urljoin(url, location or "")
        where = f"{method} {urlsplit(url).path} was redirected (HTTP {status}) to {target or '(nowhere)'}"
        if method != "GET":
            raise FatalApiError(f"{where}; batch does not follow a redirect of a request that carries "
                                "data: set the base URL to the server's real address", status=status)
        parts = urlsplit(target)
        if not location or not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(
                parts.hostname or ""))):
            raise FatalApiError(f"{where}; not followed: only https (or loopback) targets are",
                                status=status)
        return target

    async def chat(self, body: bytes) -> Completion:
        data, headers = await self.call("POST", "/chat/completions", body)
        return parse_completion(data, headers)

    async def models(self) -> list[dict[str, Any]]:
        data, _ = await self.call("GET", "/models")
        return listed(data, "models")

    async def upload(self, path: str, fields: Mapping[str, str], name: str, file: Path) -> Any:
        """POST a multipart form: `fields`, then `file` under the form name "file" as `name`."""
        import aiohttp

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


def _timed_out(limit: float) -> TransportError:
    return TransportError(f"no answer within {limit:g}s (timed out)")


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
