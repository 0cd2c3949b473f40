"""Arrow chunks kept in an anonymous temporary file: written once, read back as often as needed.

Two users: a CSV input is parsed once, by the scan that opens it, into a spool beside the state, and
the run's two passes read the chunks back from there (Arrow's streaming CSV reader reads up to 32
blocks ahead of its reader, so a slow reader, the sending pass, held 35 MB of a large file that a
spool read holds one chunk of); and pass 1 keeps every row's fingerprint and stored answer for pass 2
(`store.fingerprints`). The file has no name, so it disappears with the process whatever happens.

A spool that cannot be written (a full disk, a file-size limit, a folder that takes no file) is not
a reason to fail a run: it is dropped (`kept` stays False) and its user does the work again instead.
Each reading has its own position in the file (`os.pread`), so two readings never disturb each other.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa

log = logging.getLogger("batch")


class Spool:
    """`add` chunks, `finish`, then (if `kept`) `chunks()` as often as wanted; `close` removes it."""

    def __init__(self, schema: pa.Schema, folder: Path | None, *, instead: str) -> None:
        """`instead`: what the user does without it, for the log line that says it was dropped."""
        self._instead, self.kept = instead, False
        self._file: IO[bytes] | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        try:
            self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed by close())
            self._writer = pa.ipc.new_stream(self._file, schema)
        except OSError as exc:
            self._drop(exc)

    @property
    def writing(self) -> bool:
        return self._writer is not None

    def add(self, chunk: pa.RecordBatch) -> None:
        if self._writer is None:
            return
        try:
            self._writer.write_batch(chunk)
        except OSError as exc:
            self._drop(exc)

    def finish(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            assert self._file is not None
            self._file.flush()
        except OSError as exc:
            self._drop(exc)
            return
        self._writer, self.kept = None, True

    def chunks(self) -> Iterator[pa.RecordBatch]:
        assert self.kept and self._file is not None, "chunks() of a spool not kept"
        yield from pa.ipc.open_stream(_At(self._file.fileno()))

    def close(self) -> None:
        self._writer, self.kept = None, False
        if self._file is not None:
            self._file.close()

    def _drop(self, exc: OSError) -> None:
        log.info("could not keep a temporary file (%s); %s", exc, self._instead)
        self.close()


class _At(io.RawIOBase):
    """A reading of a file descriptor from its start, at a position of its own."""

    def __init__(self, fd: int) -> None:
        self._fd, self._pos = fd, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = os.fstat(self._fd).st_size - self._pos
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
