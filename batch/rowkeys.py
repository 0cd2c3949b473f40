"""Each input row's fingerprint, from pass 1 to pass 2, so that a run renders every row once.

Pass 1 renders every row to find what to send; pass 2 needs each row's fingerprint again to look its
answer up. Rather than render twice, pass 1 appends each group's fingerprints (and, for a row that
cannot become a request, why) to an anonymous temporary file beside the store, as Arrow IPC; pass 2
reads them back in step with the input's chunks. About 40 bytes a row on disk, a chunk's worth in
memory; the file has no name, so it disappears with the process whatever happens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO

import pyarrow as pa

from .prompts import Group

SCHEMA = pa.schema([("fingerprint", pa.string()), ("error", pa.string())])


class RowKeys:
    """Written by pass 1 (`add`, then `finish` once every row is in), read by pass 2 (`reader`)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed by close())
        self._writer: pa.ipc.RecordBatchStreamWriter | None = pa.ipc.new_stream(self._file, SCHEMA)
        self.rows = 0
        self.complete = False  # every row of the run's input is in

    def add(self, group: Group) -> None:
        assert self._writer is not None, "add() after finish()"
        self._writer.write_batch(pa.record_batch([pa.array(group.fingerprints, pa.string()),
                                                  pa.array(group.errors, pa.string())], schema=SCHEMA))
        self.rows += len(group)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.complete = True

    def reader(self) -> KeysReader:
        assert self.complete, "pass 1 did not see every row"
        self._file.seek(0)
        return KeysReader(pa.ipc.open_stream(self._file))

    def close(self) -> None:
        self._writer = None
        self._file.close()


class KeysReader:
    """The rows' keys in order, `take(n)` at a time, whatever sizes the groups had."""

    def __init__(self, reader: pa.ipc.RecordBatchStreamReader) -> None:
        self._reader = reader
        self._held: list[pa.RecordBatch] = []
        self._count = 0

    def take(self, n: int) -> tuple[pa.StringArray, pa.StringArray]:
        """The next `n` rows' fingerprints (null where the row failed) and failure messages."""
        while self._count < n:
            batch = self._reader.read_next_batch()  # StopIteration: fewer rows than the input
            self._held.append(batch)
            self._count += batch.num_rows
        table = pa.Table.from_batches(self._held, SCHEMA)
        head, rest = table.slice(0, n), table.slice(n)
        self._held, self._count = rest.to_batches(), rest.num_rows
        return head.column(0).combine_chunks(), head.column(1).combine_chunks()
