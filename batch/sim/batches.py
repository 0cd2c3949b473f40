"""The simulator's Groq Batch API: the ``/files`` and ``/batches`` routes under ``/openai/v1``.

This module owns the Batch API's HTTP side and its store: files (upload, list, info, content, delete),
batch creation and its checks (endpoint, completion window from ``24h`` to ``7d``, input file), list,
retrieve and cancel, each batch's output and error files once it is terminal, and the 403
``not_available_for_plan`` of a plan without the Batch API (``SimConfig.batch_available``). Beside it,
:mod:`.batchinput` reads an upload and checks an input file line by line (through the very schema and
model checks of the online chat route, plus ``SimConfig.batch_models``), and :mod:`.batchstate` runs
each batch's lifecycle on no background task: :meth:`BatchApi.refresh` brings it up to date, on the
simulator's clock, whenever a batch or a file is asked for. Batch lines never touch the online
rate-limit budgets (the Batch API's limits are separate on Groq) and are not in ``Simulator.log``. A
line that is a pack (:mod:`.packs`) is answered item by item, as online; its pack faults
(``SimConfig.pack_fault_rate``) are drawn when the batch is created, in answering order, from a stream
of the Batch API's own.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .batchinput import ENDPOINT, read_upload, validate_file
from .batchstate import ENDED, SimBatch, SimFile, new_id
from .config import SimConfig
from .packs import draw_damage, pack_size
from .schema import HttpError, invalid, invalid_key, parse_json

__all__ = [
    "ENDED",
    "ENDPOINT",
    "LINE_LIMIT",
    "MAX_FILE_BYTES",
    "BatchApi",
    "Handler",
    "SimBatch",
    "SimFile",
    "validate_file",
    "window_seconds",
]

MAX_FILE_BYTES = 100_000_000  # "100 MB": the decimal reading, the stricter one
LINE_LIMIT = 50_000
_WINDOW = re.compile(r"([0-9]+)([hd])")
_MIN_WINDOW_S, _MAX_WINDOW_S = 24 * 3600, 7 * 86400
_BATCH_KEYS = frozenset(("input_file_id", "endpoint", "completion_window", "metadata"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _not_found(kind: str, id_: str) -> HttpError:
    return HttpError(404, f"{kind} `{id_}` not found", code="not_found")


def window_seconds(window: object) -> int | None:
    """The completion window in simulated seconds ("36h", "2d"), or None unless it is within 24h..7d."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        return None
    seconds = int(match[1]) * (3600 if match[2] == "h" else 86400)
    return seconds if _MIN_WINDOW_S <= seconds <= _MAX_WINDOW_S else None


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


class BatchApi:
    """The Batch API's state and routes. `files` and `batches` are public for tests to inspect; call
    `refresh()` first to bring the batches up to date (the routes do it on every request)."""

    def __init__(self, config: Callable[[], SimConfig], authorized: Callable[[web.Request], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        # The config is read through a callable, as the simulator's may be changed or replaced at runtime.
        self._config, self._authorized, self._clock = config, authorized, clock
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.uploads = 0
        self.batches_created = 0
        seed = config().seed
        # Streams of their own, so that batches do not shift the online route's faults, nor faults the order.
        self._order_rng = random.Random(seed + 2)
        self._fault_rng = random.Random(seed + 3)
        self._pack_rng = random.Random(seed + 5)  # the online route's pack faults draw from seed + 4

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
                return invalid_key().response({})
            if not self._config().batch_available:
                return HttpError(403, "The Batch API is not available for your plan. Upgrade your plan "
                                 "to use it: https://console.groq.com/settings/billing",
                                 type_="permission_error", code="not_available_for_plan").response({})
            try:
                self.refresh()
                return await handler(request)
            except HttpError as err:
                return err.response({})

        return guarded

    def refresh(self) -> None:
        """Bring every batch to the present; write the files of those that reached a terminal state."""
        now = self._clock()
        for batch in self.batches.values():
            batch.advance(now)
            if batch.status in ENDED and not batch.settled:
                self._settle(batch)

    def _add_file(self, filename: str, purpose: str, data: bytes, created_at: int) -> SimFile:
        record = SimFile(new_id("file_"), filename, purpose, data, created_at)
        self.files[record.id] = record
        return record

    def _settle(self, batch: SimBatch) -> None:
        output, errors = batch.results()
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
        filename, data = await read_upload(request, MAX_FILE_BYTES)
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
        parsed = parse_json(await request.read())
        if not isinstance(parsed, dict):
            raise HttpError(400, "the request body must be a JSON object", code="invalid_value")
        for key in parsed:
            if key not in _BATCH_KEYS:
                raise HttpError(400, f"property '{key}' is unsupported")
        file_id = parsed.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise invalid("input_file_id", "value must be a non-empty string")
        if parsed.get("endpoint") != ENDPOINT:
            raise invalid("endpoint", f"value must be {ENDPOINT}")
        window = parsed.get("completion_window")
        seconds = window_seconds(window)
        if seconds is None:
            raise invalid("completion_window", "value must be a duration from 24h to 7d, such as 24h, 36h, "
                          "2d or 7d")
        metadata = parsed.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, str) for v in metadata.values())):
            raise invalid("metadata", "value must be an object of string values")
        source = self.files.get(file_id)
        if source is None:
            raise _not_found("File", file_id)
        if source.purpose != "batch":
            raise invalid("input_file_id", f"the file's purpose is {source.purpose}, not batch")
        cfg = self._config()
        lines, total, errors = validate_file(source.data, cfg.batch_models, LINE_LIMIT)
        if errors:
            lines = []
        self._order_rng.shuffle(lines)
        faulty = [cfg.batch_fault_rate > 0 and self._fault_rng.random() < cfg.batch_fault_rate for _ in lines]
        damage = [draw_damage(pack_size(x.body), cfg.pack_fault_rate, cfg.pack_faults, self._pack_rng)
                  for x in lines]
        batch = SimBatch(
            id=new_id("batch_"), input_file_id=file_id, completion_window=str(window), metadata=metadata,
            created=self._clock(), created_wall=time.time(), lines=lines, faulty=faulty, damage=damage,
            total=total,
            validation_errors=errors, validate_s=cfg.batch_validate_s, lines_per_s=cfg.batch_lines_per_s,
            finalize_s=cfg.batch_finalize_s, window_s=seconds / cfg.batch_time_scale,
            empty_error_file_id=cfg.batch_empty_error_file_id,
        )
        self.batches[batch.id] = batch
        self.batches_created += 1
        self.refresh()  # a zero validation time means the batch is past validating already
        return web.json_response(batch.to_json())

    async def _list_batches(self, request: web.Request) -> web.StreamResponse:
        newest = reversed(self.batches.values())  # in creation order, even when created at one moment
        return web.json_response({"object": "list", "data": [b.to_json() for b in newest]})

    async def _get_batch(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._batch(request).to_json())

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._batch(request)
        if batch.status in ("validating", "in_progress"):
            batch.cancel_at = self._clock()
            self.refresh()
        elif batch.status not in ("cancelling", "cancelled"):  # cancelling twice is harmless, as on OpenAI
            raise HttpError(400, f"Cannot cancel a batch with status '{batch.status}'.",
                           code="batch_not_cancellable")
        return web.json_response(batch.to_json())
