"""The simulator's Groq Batch API: the ``/files`` and ``/batches`` routes under ``/openai/v1``.

This module owns everything about imitating Groq's offline Batch API and nothing else: file storage
(upload as multipart with ``purpose=batch``, the 100 MB cap, list, info, content, delete), batch
creation and its checks (endpoint, completion window from ``24h`` to ``7d``, input file), the
line-by-line validation of the input file (custom_id, method, url, the 50,000-line cap, and each body
through the very schema and model checks of the online chat route, plus ``SimConfig.batch_models``),
and each batch's lifecycle: validating, failed, in_progress, finalizing, completed, expired,
cancelling, cancelled.

The lifecycle runs on no background task: it is a pure function of monotonic timestamps, brought up
to date whenever a batch or a file is asked for. A batch validates for ``batch_validate_s``, then
answers its lines one by one, in a seeded random order, at ``batch_lines_per_s``; its completion
window lasts the window divided by ``batch_time_scale`` in real seconds; it finalizes for
``batch_finalize_s``. The output and error files appear when the batch reaches a terminal state. An
answer is the body the online route would send for the same request (same text, same usage), so a
test can hold both routes to one standard. Batch lines never touch the online rate-limit budgets (the
Batch API's limits are separate on Groq) and are not in ``Simulator.log``.

The simulator module imports this one lazily (inside ``Simulator.__init__``), so that importing
either first never meets a half-initialized module.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from .simulator import (
    SimConfig,
    _answer,
    _ApiError,
    _chat_completion,
    _invalid,
    _invalid_key,
    _parse_json,
    _size_up,
    _usage,
    _validate,
)

MAX_FILE_BYTES = 100_000_000  # "100 MB": the decimal reading, the stricter one
MAX_LINES = 50_000
ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset(("failed", "completed", "expired", "cancelled"))
_WINDOW = re.compile(r"([0-9]+)([hd])")
_MIN_WINDOW_S, _MAX_WINDOW_S = 24 * 3600, 7 * 86400
_LINE_KEYS = frozenset(("custom_id", "method", "url", "body"))
_BATCH_KEYS = frozenset(("input_file_id", "endpoint", "completion_window", "metadata"))
_EXPIRED = {"code": "batch_expired",
            "message": "This request could not be executed before the completion window expired."}
_SERVER_ERROR = {"error": {"message": "Internal Server Error", "type": "internal_server_error"}}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:26]


def _not_found(kind: str, id_: str) -> _ApiError:
    return _ApiError(404, f"{kind} `{id_}` not found", code="not_found")


def window_seconds(window: object) -> int | None:
    """The completion window in simulated seconds ("36h", "2d"), or None unless it is within 24h..7d."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        return None
    seconds = int(match[1]) * (3600 if match[2] == "h" else 86400)
    return seconds if _MIN_WINDOW_S <= seconds <= _MAX_WINDOW_S else None


@dataclass
class SimFile:
    """An uploaded input file (purpose ``batch``) or a batch's output or error file (``batch_output``)."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose}


@dataclass(frozen=True)
class _Line:
    """A line that passed validation, with what answering it needs."""

    custom_id: str
    body: dict[str, Any]
    model: str
    cap: int | None
    prompt: int


class _LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _line_error(err: _ApiError, in_body: bool) -> _LineError:
    """A chat-route error as a line error; its param is prefixed with ``body.`` when it is the body's."""
    error: dict[str, Any] = err.body["error"]
    param: str | None = error.get("param")
    if in_body:
        param = f"body.{param}" if param else "body"
    return _LineError(error.get("code") or "invalid_request", error["message"], param)


def _check_line(raw: bytes, seen: dict[str, int], number: int, models: tuple[str, ...] | None) -> _Line:
    try:
        line = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise _LineError("invalid_json", "This line is not valid JSON.", None) from None
    if not isinstance(line, dict):
        raise _LineError("invalid_value", "A line must be a JSON object.", None)
    for key in line:
        if key not in _LINE_KEYS:
            raise _LineError("invalid_request", f"property '{key}' is unsupported", key)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _line_error(_invalid("custom_id", "value must be a non-empty string"), in_body=False)
    if custom_id in seen:
        raise _LineError("duplicate_custom_id", f"custom_id '{custom_id}' is not unique: line "
                         f"{seen[custom_id]} has it too.", "custom_id")
    seen[custom_id] = number
    if line.get("method") != "POST":
        raise _line_error(_invalid("method", "value must be POST"), in_body=False)
    if line.get("url") != ENDPOINT:
        raise _line_error(_invalid("url", f"value must be {ENDPOINT}, the batch's endpoint"), in_body=False)
    try:
        body = _validate(line.get("body"))
        model, cap, prompt, _ = _size_up(body)
    except _ApiError as err:
        raise _line_error(err, in_body=True) from None
    if models is not None and model not in models:
        raise _LineError("model_not_available_for_batch",
                         f"The model `{model}` is not available for batch processing.", "body.model")
    return _Line(custom_id, body, model, cap, prompt)


def validate_file(data: bytes, models: tuple[str, ...] | None,
                  ) -> tuple[list[_Line], int, list[dict[str, Any]]]:
    """Check every line of an input file: (valid lines, number of lines, errors with 1-based lines)."""
    errors: list[dict[str, Any]] = []
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":  # a final newline ends the last line; it does not start another
        raw_lines.pop()
    if not data.strip():
        errors.append({"code": "empty_file", "message": "The input file is empty: a batch needs at least "
                       "one request line.", "param": None, "line": None})
        return [], len(raw_lines), errors
    lines: list[_Line] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, 1):
        try:
            lines.append(_check_line(raw.removesuffix(b"\r"), seen, number, models))
        except _LineError as err:
            errors.append({"code": err.code, "message": err.message, "param": err.param, "line": number})
    if len(raw_lines) > MAX_LINES:
        errors.append({"code": "batch_too_large", "message": f"The input file has {len(raw_lines)} "
                       f"requests; a batch takes at most {MAX_LINES}.", "param": None, "line": None})
    return lines, len(raw_lines), errors


@dataclass
class SimBatch:
    """One batch. Its schedule is fixed when it is created; `advance` derives the state at a moment."""

    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float  # monotonic
    created_wall: float  # time.time() at the same moment, to turn monotonic moments into unix seconds
    lines: list[_Line]  # the valid lines in the order they are answered (random); empty if validation failed
    faulty: list[bool]  # by answering position: that line gets a 500 instead of an answer
    total: int  # lines in the input file
    validation_errors: list[dict[str, Any]]
    validate_s: float
    lines_per_s: float
    finalize_s: float
    window_s: float  # real seconds
    cancel_at: float | None = None
    status: str = "validating"
    answered: int = 0  # lines taken from `lines` so far, in order; faulty ones included
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False  # terminal, and its files exist: nothing will change any more
    stamps: dict[str, float] = field(default_factory=dict)  # event -> monotonic moment
    _failures: list[int] = field(default_factory=list)  # prefix sums of `faulty`

    def __post_init__(self) -> None:
        self._failures = list(itertools.accumulate(self.faulty, initial=0))

    @property
    def started(self) -> float:
        return self.created + self.validate_s

    def done_at(self, position: int) -> float:
        """When the line at this answering position is answered."""
        return self.started + (position + 1) / self.lines_per_s

    def wall(self, moment: float) -> int:
        return int(self.created_wall + (moment - self.created))

    def _answered_by(self, moment: float) -> int:
        return max(0, min(len(self.lines), math.floor((moment - self.started) * self.lines_per_s)))

    def advance(self, now: float) -> None:
        """Bring status, stamps and counts to `now`."""
        if self.settled:
            return
        started, n = self.started, len(self.lines)
        if self.cancel_at is not None:
            self.stamps["cancelling"] = self.cancel_at
            if self.cancel_at >= started:
                self.stamps["in_progress"] = started
            self.answered = self._answered_by(self.cancel_at)  # lines stop being answered at the cancel
            self.status = "cancelling"
            if now >= self.cancel_at + self.finalize_s:
                self.status, self.stamps["cancelled"] = "cancelled", self.cancel_at + self.finalize_s
        elif now < started:
            self.status = "validating"
        elif self.validation_errors:
            self.status, self.stamps["failed"] = "failed", started
        else:
            self.stamps["in_progress"] = started
            last = started + n / self.lines_per_s
            expires = max(self.created + self.window_s, started)
            if last <= expires and now >= last:
                # Set, not computed: floating point could leave the last line a hair short of its moment.
                self.answered, self.status, self.stamps["finalizing"] = n, "finalizing", last
                if now >= last + self.finalize_s:
                    self.status, self.stamps["completed"] = "completed", last + self.finalize_s
            elif last > expires and now >= expires:
                self.answered, self.status = self._answered_by(expires), "expired"
                self.stamps["expired"] = expires
            else:
                self.answered, self.status = self._answered_by(now), "in_progress"
        self.failed = self._failures[self.answered]
        self.completed = self.answered - self.failed
        if self.status == "expired":
            self.failed += n - self.answered  # expired lines are in the error file: they count as failed

    def to_json(self) -> dict[str, Any]:
        def at(event: str) -> int | None:
            moment = self.stamps.get(event)
            return None if moment is None else self.wall(moment)

        counted = "in_progress" in self.stamps or self.status == "failed"  # Groq shows 0 while validating
        return {
            "id": self.id, "object": "batch", "endpoint": ENDPOINT,
            "errors": {"object": "list", "data": self.validation_errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": int(self.created_wall), "in_progress_at": at("in_progress"),
            "expires_at": self.wall(self.created + self.window_s), "finalizing_at": at("finalizing"),
            "completed_at": at("completed"), "failed_at": at("failed"), "expired_at": at("expired"),
            "cancelling_at": at("cancelling"), "cancelled_at": at("cancelled"),
            "request_counts": {"total": self.total if counted else 0, "completed": self.completed,
                               "failed": self.failed},
            "metadata": self.metadata,
        }


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


class BatchApi:
    """The Batch API's state and routes. `files` and `batches` are public for tests to inspect; call
    `refresh()` first to bring the batches up to date (the routes do it on every request)."""

    def __init__(self, config: Callable[[], SimConfig], authorized: Callable[[web.Request], bool]) -> None:
        # The config is read through a callable, as the simulator's may be changed or replaced at runtime.
        self._config, self._authorized = config, authorized
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.uploads = 0
        self.batches_created = 0
        seed = config().seed
        # Streams of their own, so that batches do not shift the online route's faults, nor faults the order.
        self._order_rng = random.Random(seed + 2)
        self._fault_rng = random.Random(seed + 3)

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        routes: tuple[tuple[str, str, Handler], ...] = (
            ("POST", "/files", self._upload),
            ("GET", "/files", self._list_files),
            ("GET", "/files/{file_id}", self._file_info),
            ("GET", "/files/{file_id}/content", self._file_content),
            ("DELETE", "/files/{file_id}", self._delete_file),
            ("POST", "/batches", self._create_batch),
            ("GET", "/batches", self._list_batches),
            ("GET", "/batches/{batch_id}", self._get_batch),
            ("POST", "/batches/{batch_id}/cancel", self._cancel),
        )
        for method, path, handler in routes:
            router.add_route(method, prefix + path, self._guarded(handler))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return _invalid_key().response({})
            try:
                self.refresh()
                return await handler(request)
            except _ApiError as err:
                return err.response({})

        return guarded

    def refresh(self) -> None:
        """Bring every batch to the present; write the files of those that reached a terminal state."""
        now = time.monotonic()
        for batch in self.batches.values():
            batch.advance(now)
            if batch.status in TERMINAL and not batch.settled:
                self._settle(batch)

    def _add_file(self, filename: str, purpose: str, data: bytes, created_at: int) -> SimFile:
        record = SimFile(_new_id("file_"), filename, purpose, data, created_at)
        self.files[record.id] = record
        return record

    def _settle(self, batch: SimBatch) -> None:
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for position, line in enumerate(batch.lines[: batch.answered]):
            request_id = _new_id("req_")
            if batch.faulty[position]:
                response = {"status_code": 500, "request_id": request_id, "body": _SERVER_ERROR}
                errors.append({"id": _new_id("batch_req_"), "custom_id": line.custom_id, "response": response,
                               "error": None})
                continue
            text, completion, finish = _answer(line.body, line.cap)
            # Queue time is the wait for its turn; no decoding latency is simulated, as online at latency 0.
            usage = _usage(line.model, line.prompt, completion, position / batch.lines_per_s, 0.0)
            body = _chat_completion(line.model, text, finish, usage, request_id,
                                    batch.wall(batch.done_at(position)))
            output.append({"id": _new_id("batch_req_"), "custom_id": line.custom_id,
                           "response": {"status_code": 200, "request_id": request_id, "body": body},
                           "error": None})
        if batch.status == "expired":
            errors += [{"id": _new_id("batch_req_"), "custom_id": line.custom_id, "response": None,
                        "error": dict(_EXPIRED)} for line in batch.lines[batch.answered:]]
        ended = batch.wall(max(batch.stamps.values(), default=batch.created))
        if output:
            name = f"{batch.id}_output.jsonl"
            batch.output_file_id = self._add_file(name, "batch_output", _jsonl(output), ended).id
        if errors:
            name = f"{batch.id}_error.jsonl"
            batch.error_file_id = self._add_file(name, "batch_output", _jsonl(errors), ended).id
        batch.settled = True

    def _file(self, request: web.Request) -> SimFile:
        file_id = request.match_info["file_id"]
        record = self.files.get(file_id)
        if record is None:
            raise _not_found("File", file_id)
        return record

    def _batch(self, request: web.Request) -> SimBatch:
        batch_id = request.match_info["batch_id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            raise _not_found("Batch", batch_id)
        return batch

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "multipart/form-data":
            raise _ApiError(400, "Upload a file as multipart/form-data, with the fields 'file' and "
                            "'purpose'.", code="invalid_value")
        data: bytes | None = None
        purpose: str | None = None
        filename, size = "", 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                filename, size = part.filename or "file", 0
                chunks: list[bytes] = []
                # Read to the end even past the cap: a client still sending would miss the 400 otherwise.
                while chunk := await part.read_chunk():
                    size += len(chunk)
                    if size <= MAX_FILE_BYTES:
                        chunks.append(chunk)
                data = b"".join(chunks)
            elif part.name == "purpose":
                purpose = await part.text()
            else:
                await part.release()
        if data is None:
            raise _ApiError(400, "'file' : a file is required", code="missing_required_parameter",
                            param="file")
        if purpose is None:
            raise _ApiError(400, "'purpose' : a purpose is required", code="missing_required_parameter",
                            param="purpose")
        if purpose != "batch":
            raise _invalid("purpose", "value must be batch")
        if size > MAX_FILE_BYTES:
            raise _ApiError(400, f"The file is {size} bytes; a file may be at most 100 MB ({MAX_FILE_BYTES} "
                            "bytes).", code="file_too_large", param="file")
        self.uploads += 1
        record = self._add_file(filename, "batch", data, int(time.time()))
        return web.json_response(record.to_json())

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        data = [f.to_json() for f in reversed(self.files.values())]  # newest first
        return web.json_response({"object": "list", "data": data})

    async def _file_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._file(request).to_json())

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._file(request).data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        record = self._file(request)
        del self.files[record.id]
        return web.json_response({"id": record.id, "object": "file", "deleted": True})

    async def _create_batch(self, request: web.Request) -> web.StreamResponse:
        parsed = _parse_json(await request.read())
        if not isinstance(parsed, dict):
            raise _ApiError(400, "the request body must be a JSON object", code="invalid_value")
        for key in parsed:
            if key not in _BATCH_KEYS:
                raise _ApiError(400, f"property '{key}' is unsupported")
        file_id = parsed.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise _invalid("input_file_id", "value must be a non-empty string")
        if parsed.get("endpoint") != ENDPOINT:
            raise _invalid("endpoint", f"value must be {ENDPOINT}")
        window = parsed.get("completion_window")
        seconds = window_seconds(window)
        if seconds is None:
            raise _invalid("completion_window", "value must be a duration from 24h to 7d, such as 24h, 36h, "
                           "2d or 7d")
        metadata = parsed.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, str) for v in metadata.values())):
            raise _invalid("metadata", "value must be an object of string values")
        source = self.files.get(file_id)
        if source is None:
            raise _not_found("File", file_id)
        if source.purpose != "batch":
            raise _invalid("input_file_id", f"the file's purpose is {source.purpose}, not batch")
        cfg = self._config()
        lines, total, errors = validate_file(source.data, cfg.batch_models)
        if errors:
            lines = []
        self._order_rng.shuffle(lines)
        faulty = [cfg.batch_fault_rate > 0 and self._fault_rng.random() < cfg.batch_fault_rate for _ in lines]
        batch = SimBatch(
            id=_new_id("batch_"), input_file_id=file_id, completion_window=str(window), metadata=metadata,
            created=time.monotonic(), created_wall=time.time(), lines=lines, faulty=faulty, total=total,
            validation_errors=errors, validate_s=cfg.batch_validate_s, lines_per_s=cfg.batch_lines_per_s,
            finalize_s=cfg.batch_finalize_s, window_s=seconds / cfg.batch_time_scale,
        )
        self.batches[batch.id] = batch
        self.batches_created += 1
        self.refresh()  # a zero validation time means the batch is past validating already
        return web.json_response(batch.to_json())

    async def _list_batches(self, request: web.Request) -> web.StreamResponse:
        newest = sorted(self.batches.values(), key=lambda b: b.created, reverse=True)
        return web.json_response({"object": "list", "data": [b.to_json() for b in newest]})

    async def _get_batch(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._batch(request).to_json())

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._batch(request)
        if batch.status in ("validating", "in_progress"):
            batch.cancel_at = time.monotonic()
            self.refresh()
        elif batch.status not in ("cancelling", "cancelled"):  # cancelling twice is harmless, as on OpenAI
            raise _ApiError(400, f"Cannot cancel a batch with status '{batch.status}'.",
                            code="batch_not_cancellable")
        return web.json_response(batch.to_json())
