"""The Batch API's file formats: request lines going in, result lines coming back.

A request line wraps the exact body bytes an online run would post, so a row's fingerprint (the
`custom_id`) and its answer are the same in both modes:

    {"custom_id": "<fingerprint>", "method": "POST", "url": "/v1/chat/completions", "body": <body>}

Groq takes at most 50,000 lines and 100 MB a file; `ChunkWriter` cuts the stream of requests into
files under both. Result lines (output and error files alike) become `Answer`s: a 200 is an answer,
another status a row error (permanent when re-sending cannot help, as online), and an expired or
cancelled request no answer at all — it stays pending.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import ApiError, BadRequest, FatalApiError, RequestTooLarge, TransportError
from ..records import Answer, Request
from ..responses import error_from_response, parse_completion

log = logging.getLogger("batch")

MAX_LINES = 50_000
MAX_BYTES = 100_000_000  # "100 MB", read as the smaller (decimal) megabyte
_HEAD = b'{"custom_id":"%s","method":"POST","url":"/v1/chat/completions","body":'


def request_line(r: Request) -> bytes:
    return _HEAD % r.fingerprint.encode() + r.body + b"}\n"


def starts_new_file(lines: int, size: int, line_size: int, max_lines: int = MAX_LINES,
                    max_bytes: int = MAX_BYTES) -> bool:
    """Whether a line of `line_size` bytes must open a new file after `lines` lines of `size` bytes."""
    return lines > 0 and (lines >= max_lines or size + line_size > max_bytes)


@dataclass
class Chunk:
    """One finished request file: its path, content hash and the fingerprint on each line."""

    path: Path
    sha256: str
    fingerprints: list[str]
    size: int


@dataclass
class ChunkWriter:
    """Writes requests into files of at most `max_lines` lines and `max_bytes` bytes, in `folder`.

    `add()` returns the previous file once a request does not fit in it; `finish()` the last one.
    `holds()` says whether the file being written already has a fingerprint (custom ids are unique
    within a file, and identical rows share one request)."""

    folder: Path
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    _fps: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _size: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _file: BinaryIO | None = None
    _count: int = 0

    def holds(self, fingerprint: str) -> bool:
        return fingerprint in self._seen

    def add(self, r: Request) -> Chunk | None:
        line = request_line(r)
        done = None
        if starts_new_file(len(self._fps), self._size, len(line), self.max_lines, self.max_bytes):
            done = self.finish()
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._count += 1
            self._path = self.folder / f"writing-{os.getpid()}-{self._count}.jsonl"
            self._file = self._path.open("wb")
        self._file.write(line)
        self._hash.update(line)
        self._size += len(line)
        self._fps.append(r.fingerprint)
        self._seen.add(r.fingerprint)
        return done

    def finish(self) -> Chunk | None:
        if self._file is None:
            return None
        self._file.close()
        chunk = Chunk(self._path, self._hash.hexdigest(), self._fps, self._size)
        self._file, self._fps, self._seen, self._size, self._hash = None, [], set(), 0, hashlib.sha256()
        return chunk

    def discard(self) -> None:
        """Drop the file being written (a stopped run submits nothing half-made)."""
        chunk = self.finish()
        if chunk is not None:
            chunk.path.unlink(missing_ok=True)


@dataclass
class Results:
    """What one result file held: answers by fingerprint, and the requests it left unanswered."""

    answers: list[Answer] = field(default_factory=list)
    unanswered: set[str] = field(default_factory=set)  # expired or cancelled: still to be asked
    unreadable: int = 0


def read_results(path: Path) -> Results:
    """Parse a downloaded output or error file, line by line."""
    out = Results()
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                fp = line["custom_id"]
                if not isinstance(fp, str):
                    raise TypeError("custom_id is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                out.unreadable += 1
                log.warning("batch: skipped an unreadable line of %s (%s)", path.name, exc)
                continue
            answer = _answer(fp, line)
            if answer is None:
                out.unanswered.add(fp)
            else:
                out.answers.append(answer)
    return out


def _answer(fp: str, line: dict[str, object]) -> Answer | None:
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
        if status == 200:
            try:  # the line's request id stands where the online answer's x-request-id header would
                c = parse_completion(body, {"x-request-id": request_id} if request_id else {})
            except TransportError as exc:
                return Answer.failure(fp, f"Batch API: {exc}", permanent=False, attempts=1,
                                      request_id=request_id)
            return Answer.from_completion(fp, c, attempts=1, latency_s=None)
        err = error_from_response(status, json.dumps(body).encode(), {})
        return Answer.failure(fp, f"Batch API: {_describe(err)}", permanent=_permanent(err), attempts=1,
                              request_id=request_id)
    code = error.get("code") if isinstance(error, dict) else None
    if code in ("batch_expired", "batch_cancelled"):
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return Answer.failure(fp, f"Batch API: {message or code or 'no response for this request'}",
                          permanent=False, attempts=1)


def _permanent(exc: ApiError) -> bool:
    # As online: re-sending the same request cannot fix a 400/413 or a refused model.
    return isinstance(exc, BadRequest | RequestTooLarge | FatalApiError)


def _describe(exc: ApiError) -> str:
    text = str(exc)
    return text if not exc.status or text.startswith((str(exc.status), "HTTP")) else f"{exc.status}: {text}"


def upload_folder(state: Path) -> Path:
    """Where request files wait for upload, and results for merging: beside the state."""
    return state.with_name(state.name + ".batches")


def remove_folder_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or still holding a file for the next run
        folder.rmdir()
