"""Arrow chunks kept in an anonymous temporary file: written once, read back as often as needed.

A CSV input is parsed once, by the scan that opens it, into a spool beside the state; the run's two
passes read the chunks back from there. Arrow's streaming CSV reader reads up to 32 blocks ahead of
its reader, so a slow reader (the sending pass) held 35 MB of a large file that a spool read holds
one chunk of, and the second pass no longer parses the text again. About the size of the input on
disk; the file has no name, so it disappears with the process whatever happens.

Each reading has its own position in the file (`os.pread`), so two readings never disturb each other.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa


class Spool:
    """`add` chunks, `finish`, then `chunks()` as often as wanted; `close` removes the file."""

    def __init__(self, schema: pa.Schema, folder: Path | None = None) -> None:
        self.schema = schema
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (see close())
        self._writer: pa.ipc.RecordBatchStreamWriter | None = pa.ipc.new_stream(self._file, schema)
        self.rows = 0

    def add(self, chunk: pa.RecordBatch) -> None:
        """Raises OSError when the folder has no room (the caller reads its source again instead)."""
        assert self._writer is not None, "add() after finish()"
        self._writer.write_batch(chunk)
        self.rows += chunk.num_rows

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.flush()
            self._writer = None

    def chunks(self) -> Iterator[pa.RecordBatch]:
        assert self._writer is None, "chunks() before finish()"
        yield from pa.ipc.open_stream(_At(self._file.fileno()))

    def close(self) -> None:
        self._writer = None
        self._file.close()


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

