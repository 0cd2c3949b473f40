"""The Python door's tables: what a caller hands in becomes `Rows`, and the answers go back in its kind.

    pandas DataFrame        -> Arrow, in memory (it already is)       -> pandas, the caller's index kept
    pyarrow Table           -> read in place                          -> pyarrow Table
    __arrow_c_stream__      -> spooled to an Arrow IPC file on disk   -> pyarrow Table
      (polars, DuckDB, a RecordBatchReader: read once, chunk by chunk, never held whole)
    a path (str or Path)    -> `source.Source`, as `[input] path`     -> pandas

A run reads its rows twice (to send, then to write), and a stream can be read only once: hence the
spool, memory-mapped so that its pages belong to the OS cache, not to the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import InputError
from batch.tables.source import CHUNK_ROWS

PANDAS, ARROW, PATH = "pandas", "arrow", "path"


class TableRows:
    """Rows of an Arrow table held in memory (a pyarrow Table, or a DataFrame converted once)."""

    def __init__(self, table: pa.Table, name: str) -> None:
        self.table, self.name = table, name

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def numbered(self, limit: int | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        table = self.table if limit is None else self.table.slice(0, limit)
        row = 0
        for chunk in table.to_batches(max_chunksize=CHUNK_ROWS):
            if chunk.num_rows:
                yield row, chunk
                row += chunk.num_rows


class SpooledRows(TableRows):
    """An Arrow stream, written to `path` as it is read, then read back memory-mapped."""

    def __init__(self, stream: Any, path: Path, name: str) -> None:
        reader = pa.RecordBatchReader.from_stream(stream)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
            for chunk in reader:
                writer.write_batch(chunk)
        super().__init__(pa.ipc.open_file(pa.memory_map(str(path))).read_all(), name)


def rows_of(data: Any, spool: Path) -> tuple[TableRows | None, str]:
    """The rows of an in-memory `data` and the kind the result takes; (None, PATH) for a path."""
    if isinstance(data, str | Path):
        return None, PATH
    if _is_pandas(data):
        return TableRows(_from_pandas(data), "the DataFrame"), PANDAS
    if isinstance(data, pa.Table):
        return TableRows(data, "the Arrow table"), ARROW
    if isinstance(data, pa.RecordBatch):
        return TableRows(pa.Table.from_batches([data]), "the Arrow record batch"), ARROW
    if hasattr(data, "__arrow_c_stream__"):
        return SpooledRows(data, spool, f"the {type(data).__name__} stream"), ARROW
    raise InputError(f"data: cannot read a {type(data).__module__}.{type(data).__name__}; pass a pandas "
                     "DataFrame, a pyarrow Table, an object with __arrow_c_stream__ (polars, DuckDB, "
                     "a RecordBatchReader), or the path of a .csv, .parquet or .jsonl file")


def _nullable(arrow_type: pa.DataType) -> Any:
    """Counts stay integers when some rows have none (a failed row): pandas' nullable types, not floats."""
    import pandas as pd  # only when pandas is what the caller works with

    return {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get(arrow_type)


def _series(column: pa.ChunkedArray) -> Any:
    return column.to_pandas(types_mapper=_nullable).array


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def _from_pandas(df: Any) -> pa.Table:
    bad = [c for c in df.columns if not isinstance(c, str)]
    if bad:
        raise InputError(f"data: column names must be strings (templates name them), got {bad[:5]!r}; "
                         "rename them, e.g. df.columns = df.columns.astype(str)")
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"data: a column cannot be stored as one Arrow type ({exc}); give that column "
                         "one type, e.g. df[col] = df[col].astype(str)") from exc


def result(kind: str, data: Any, output: Path, summary: dict[str, Any]) -> Any:
    """The output file read back in the caller's kind, with the run's summary on it."""
    table = pq.read_table(output)
    if kind == PANDAS:
        # The caller's own columns, untouched (dtypes, index), then the answer columns.
        frame = data.copy()
        for name in table.column_names[len(data.columns):]:
            frame[name] = _series(table.column(name))
        frame.attrs["batch"] = summary
        return frame
    if kind == PATH:
        frame = table.to_pandas(types_mapper=_nullable)
        frame.attrs["batch"] = summary
        return frame
    meta = dict(table.schema.metadata or {})
    meta[b"batch"] = json.dumps(summary).encode()
    return table.replace_schema_metadata(meta)
