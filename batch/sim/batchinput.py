"""The simulator's reading of an uploaded file, and its check of a Batch API input file, line by line.

This module owns what a batch's input file must be: JSONL, one chat request a line, each line an
object of ``custom_id`` (non-empty, unique in the file), ``method`` (POST), ``url`` (the batch's
endpoint, :data:`ENDPOINT`) and ``body``, which must pass the very schema and model checks of the
online chat route (an error there gets its param prefixed with ``body.``), on a model that
``SimConfig.batch_models`` lets the Batch API take; and the whole file must not be empty nor longer
than the line cap. :func:`validate_file` gives back the valid lines, ready to answer, and every error
with its 1-based line, as Groq lists them in a failed batch. :func:`read_upload` reads the multipart
upload that brings such a file (``file`` and ``purpose=batch``, at most 100 MB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from .answers import size_up
from .schema import HttpError, invalid, validate

ENDPOINT = "/v1/chat/completions"
_LINE_KEYS = frozenset(("custom_id", "method", "url", "body"))


@dataclass(frozen=True)
class Line:
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


def _line_error(err: HttpError, in_body: bool) -> _LineError:
    """A chat-route error as a line error; its param is prefixed with ``body.`` when it is the body's."""
    error: dict[str, Any] = err.body["error"]
    param: str | None = error.get("param")
    if in_body:
        param = f"body.{param}" if param else "body"
    return _LineError(error.get("code") or "invalid_request", error["message"], param)


def _check_line(raw: bytes, seen: dict[str, int], number: int, models: tuple[str, ...] | None) -> Line:
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
        raise _line_error(invalid("custom_id", "value must be a non-empty string"), in_body=False)
    if custom_id in seen:
        raise _LineError("duplicate_custom_id", f"custom_id '{custom_id}' is not unique: line "
                         f"{seen[custom_id]} has it too.", "custom_id")
    seen[custom_id] = number
    if line.get("method") != "POST":
        raise _line_error(invalid("method", "value must be POST"), in_body=False)
    if line.get("url") != ENDPOINT:
        raise _line_error(invalid("url", f"value must be {ENDPOINT}, the batch's endpoint"), in_body=False)
    try:
        body = validate(line.get("body"))
        model, cap, prompt, _ = size_up(body)
    except HttpError as err:
        raise _line_error(err, in_body=True) from None
    if models is not None and model not in models:
        raise _LineError("model_not_available_for_batch",
                         f"The model `{model}` is not available for batch processing.", "body.model")
    return Line(custom_id, body, model, cap, prompt)


def validate_file(data: bytes, models: tuple[str, ...] | None, max_lines: int,
                  ) -> tuple[list[Line], int, list[dict[str, Any]]]:
    """Check every line of an input file: (valid lines, number of lines, errors with 1-based lines).

    ``max_lines`` is the cap on lines; the Batch API passes its ``LINE_LIMIT``, read at each call.
    """
    errors: list[dict[str, Any]] = []
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":  # a final newline ends the last line; it does not start another
        raw_lines.pop()
    if not data.strip():
        errors.append({"code": "empty_file", "message": "The input file is empty: a batch needs at least "
                       "one request line.", "param": None, "line": None})
        return [], len(raw_lines), errors
    lines: list[Line] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, 1):
        try:
            lines.append(_check_line(raw.removesuffix(b"\r"), seen, number, models))
        except _LineError as err:
            errors.append({"code": err.code, "message": err.message, "param": err.param, "line": number})
    if len(raw_lines) > max_lines:
        errors.append({"code": "batch_too_large", "message": f"The input file has {len(raw_lines)} "
                       f"requests; a batch takes at most {max_lines}.", "param": None, "line": None})
    return lines, len(raw_lines), errors


async def read_upload(request: web.Request, max_bytes: int) -> tuple[str, bytes]:
    """The (filename, content) of a ``POST /files``, or the 400 Groq sends for it."""
    if request.content_type != "multipart/form-data":
        raise HttpError(400, "Upload a file as multipart/form-data, with the fields 'file' and "
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
                if size <= max_bytes:
                    chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name == "purpose":
            purpose = await part.text()
        else:
            await part.release()
    if data is None:
        raise HttpError(400, "'file' : a file is required", code="missing_required_parameter", param="file")
    if purpose is None:
        raise HttpError(400, "'purpose' : a purpose is required", code="missing_required_parameter",
                        param="purpose")
    if purpose != "batch":
        raise invalid("purpose", "value must be batch")
    if size > max_bytes:
        raise HttpError(400, f"The file is {size} bytes; a file may be at most 100 MB ({max_bytes} "
                        "bytes).", code="file_too_large", param="file")
    return filename, data
