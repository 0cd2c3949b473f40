"""The Batch API's request files: lines going in, cut at Groq's limits, and where they wait.

A request line wraps the exact body bytes an online run would post, so a row's fingerprint (the
`custom_id`) and its answer are the same in both modes:

    {"custom_id": "<fingerprint>", "method": "POST", "url": "/v1/chat/completions", "body": <body>}

Groq takes at most 50,000 lines and 100 MB a file; `ChunkWriter` cuts the stream of requests into
files under both. The result files coming back are read by `results`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from batch.records import Request

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


def upload_folder(state: Path) -> Path:
    """Where request files wait for upload, and results for merging: beside the state."""
    return state.with_name(state.name + ".batches")


def remove_folder_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or still holding a file for the next run
        folder.rmdir()
