"""The input table: CSV, Parquet or JSONL, streamed in Arrow record chunks, never loaded whole.

Values are kept exactly as stored. CSV columns are read as text (no type guessing: "007" stays
"007"), an unquoted empty cell is null and a quoted one ("") is the empty string; "NA", "None" and
"nan" are text like any other. JSONL objects become one column per key (first-seen order); a key
whose values mix types or nest is kept as JSON text so every chunk has the same schema.

Opening a source reads the whole file once (streaming) to count rows and to find a malformed line
before any request is sent; `chunks()` then streams it again as often as the run needs (a CSV file
from the chunks that scan parsed, kept in a `spool`: parsed once, and read back one chunk at a time).
How a CSV file is parsed so that no value changes, and a row of any size fits, is `csvfile`'s.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import InputError
from batch.tables import csvfile, jsonl
from batch.tables.spool import Spool

CHUNK_ROWS = 4096
CHUNK_BYTES = 16 << 20  # and at most about this much data: a chunk of long texts has fewer rows


@contextlib.contextmanager
def arrow_without_pandas() -> Iterator[None]:
    """For a process that never hands Arrow data to pandas (the command line's run): while this holds,
    `import pandas` fails. pyarrow imports pandas the first time it builds an array, only to see whether
    it is there (and tries again on every array while it is not found), which costs about 35 MB and
    0.1 s for nothing. A door that works with pandas (the Python API, the cluster runner) must not use
    this."""
    if "pandas" in sys.modules:
        yield
        return
    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)


class _NoPandas:  # an import finder under which `import pandas` fails
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not wanted here")


class Rows(Protocol):
    """What the engine reads rows from: a schema, a row count, and the rows in order, in chunks, as
    often as it asks (a run reads them twice: to send, then to write). `Source` reads a file; the
    Python API has its own kinds."""

    @property
    def name(self) -> str: ...  # how messages name the input: its path, or "the DataFrame"

    @property
    def schema(self) -> pa.Schema: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def columns(self) -> list[str]: ...

    def numbered(self, limit: int | None = None) -> Iterator[tuple[int, pa.RecordBatch]]: ...


class Source:
    """An input file, checked whole once when opened, then streamed in chunks."""

    def __init__(self, path: Path, fmt: str, spool_in: Path | None = None) -> None:
        """`spool_in`: the folder for a CSV file's parsed chunks (else the system's temporary one)."""
        self.path, self.format, self.name = path, fmt, str(path)
        self._spool: Spool | None = None
        if not path.is_file():
            raise InputError(f"input file {path} does not exist (set [input] path, relative to the job file)")
        try:
            if fmt == "parquet":
                meta = pq.ParquetFile(path)
                self.schema: pa.Schema = meta.schema_arrow
                self.num_rows: int = meta.metadata.num_rows
            elif fmt == "csv":
                self._open_csv(spool_in)
            elif fmt == "jsonl":
                self.schema, self.num_rows = jsonl.scan(path)
            else:
                raise InputError(f"unknown input format {fmt!r} (use csv, parquet or jsonl)")
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            self.close()
            raise InputError(f"cannot read {path} as {fmt}: {exc}") from exc
        names = self.schema.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.close()
            raise InputError(f"{path}: duplicate column names {dupes}; every column needs its own name")

    def _open_csv(self, folder: Path | None) -> None:
        """Read the column names, then scan; with a block twice as large each time a row did not fit
        (read again from the start: the rows already parsed were cut at the old block's boundaries)."""
        self._block = csvfile.FIRST_BLOCK
        while True:
            try:
                names = csvfile.column_names(self.path, self._block)
                self.schema = pa.schema([(name, pa.string()) for name in names])
                self.num_rows = self._scan_csv(folder)
                return
            except csvfile.BlockTooSmall:
                self.close()
                self._block *= 2

    def _scan_csv(self, folder: Path | None) -> int:
        """Parse the whole file once, keeping the chunks in a spool (without room for one, each pass
        parses the file again)."""
        rows, spool = 0, Spool(self.schema, folder, instead=f"{self.path} is parsed again on each pass")
        try:
            for chunk in self._csv_chunks():
                rows += chunk.num_rows
                spool.add(chunk)
        except BaseException:
            spool.close()
            raise
        spool.finish()
        self._spool = spool if spool.kept else None
        # A source dropped without `close` (the engine drops its sources) must not leave the spool's
        # file for the collector to find open (a ResourceWarning): it is closed with the source.
        weakref.finalize(self, spool.close)
        return rows

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def close(self) -> None:
        """Remove a CSV file's spool (a closed source reads no more)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def chunks(self, limit: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows in order, in chunks; at most `limit` rows when given."""
        if self.format == "parquet":
            # Read a row group's columns a megabyte at a time, not whole: memory stays flat in its size.
            pf = pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
            it: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=_parquet_rows(pf))
        elif self.format == "csv":
            it = self._spool.chunks() if self._spool is not None else self._csv_chunks()
        else:
            it = jsonl.chunks(self.path, self.schema, CHUNK_ROWS)
        left = self.num_rows if limit is None else limit
        for whole in it:
            for chunk in _bounded(whole):
                if left <= 0:
                    return
                if chunk.num_rows > left:
                    chunk = chunk.slice(0, left)
                left -= chunk.num_rows
                if chunk.num_rows:
                    yield chunk

    def numbered(self, limit: int | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """`chunks()` with the 0-based number of each chunk's first row."""
        row = 0
        for chunk in self.chunks(limit):
            yield row, chunk
            row += chunk.num_rows

    def _csv_chunks(self) -> Iterator[pa.RecordBatch]:
        return csvfile.batches(self.path, self.schema.names, self._block)


def _parquet_rows(pf: pq.ParquetFile) -> int:
    """Rows per chunk for this file: CHUNK_ROWS, fewer when its rows are large."""
    meta = pf.metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    per_row = size / max(meta.num_rows, 1)
    return max(1, min(CHUNK_ROWS, int(CHUNK_BYTES / max(per_row, 1.0))))


def _bounded(chunk: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    """The chunk in slices of at most about CHUNK_BYTES (a slice shares the chunk's memory)."""
    size = chunk.nbytes
    if size <= CHUNK_BYTES or chunk.num_rows <= 1:
        yield chunk
        return
    step = max(1, chunk.num_rows * CHUNK_BYTES // size)
    for start in range(0, chunk.num_rows, step):
        yield chunk.slice(start, step)
