"""The Python door's tables: what a caller hands in becomes `Rows`, and the answers go back in its kind.

    pandas DataFrame        -> Arrow, in memory (it already is)       -> pandas, the caller's frame kept
    pandas Series (named)   -> a one-column DataFrame                 -> pandas DataFrame
    pyarrow Table           -> read in place                          -> pyarrow Table
    polars DataFrame        -> spooled, as a stream (below)           -> polars DataFrame
    polars LazyFrame        -> collected, then as a DataFrame         -> polars DataFrame
    __arrow_c_stream__      -> spooled to an Arrow IPC file on disk   -> pyarrow Table
      (DuckDB, a RecordBatchReader: read once, chunk by chunk, never held whole)
    a path (str or Path)    -> `source.Source`, as `[input] path`     -> pandas

A run reads its rows twice (to send, then to write), and a stream can be read only once: hence the
spool, memory-mapped so that its pages belong to the OS cache, not to the process.

The caller's columns come back as the caller gave them, values and types (a polars Categorical stays a
dictionary of string_view, a DuckDB INTERVAL an interval), taken from the caller's table, not from the
output file, which holds them as `storable` converts them. Whatever cannot be read (duplicate column
names, a polars Object column, a stream that is not a table) is refused before anything is sent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch.errors import InputError
from batch.tables.readback import read_output
from batch.tables.source import CHUNK_ROWS, Rows
from batch.tables.storable import Storable

PANDAS, POLARS, ARROW, PATH = "pandas", "polars", "arrow", "path"


class TableRows:
    """Rows of an Arrow table held in memory (a pyarrow Table, or a DataFrame converted once)."""

    def __init__(self, table: pa.Table, name: str) -> None:
        _distinct(table.column_names, name)
        self.table, self.name = table, name  # the caller's columns, unconverted
        self._storable = Storable(table, name)

    @property
    def schema(self) -> pa.Schema:
        return self._storable.schema

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
                yield row, self._storable.apply(chunk)
                row += chunk.num_rows

    def caller_table(self) -> pa.Table:
        """The caller's columns as given, for the result."""
        return self.table


class SpooledRows(TableRows):
    """An Arrow stream, written to `path` as it is read, then read back memory-mapped."""

    def __init__(self, stream: Any, path: Path, name: str) -> None:
        try:
            reader = pa.RecordBatchReader.from_stream(stream)
        except pa.ArrowException as exc:
            raise InputError(_unreadable(stream, name, exc)) from exc
        except Exception as exc:  # the producer's own failure (a DuckDB query runs here): nothing sent
            raise InputError(f"data: reading {name} failed: {type(exc).__name__}: {exc}") from exc
        try:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
                for chunk in reader:
                    writer.write_batch(chunk)
        except Exception as exc:  # the same, met while the rows stream in
            raise InputError(f"data: reading {name} failed: {type(exc).__name__}: {exc}") from exc
        self.path = path
        super().__init__(pa.ipc.open_file(pa.memory_map(str(path))).read_all(), name)

    def caller_table(self) -> pa.Table:
        # Read into memory: the result outlives the temporary folder that holds the spool.
        with pa.OSFile(str(self.path)) as file:
            return pa.ipc.open_file(file).read_all()


def rows_of(data: Any, spool: Path) -> tuple[TableRows | None, str]:
    """The rows of an in-memory `data` and the kind the result takes; (None, PATH) for a path."""
    if isinstance(data, str | Path):
        return None, PATH
    pd = sys.modules.get("pandas")  # whatever the caller hands in from pandas, pandas is imported
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series):
        what = "the DataFrame" if isinstance(data, pd.DataFrame) else "the Series"
        return TableRows(_from_pandas(_frame(data), what), what), PANDAS
    pl = sys.modules.get("polars")  # likewise: a polars frame means polars is imported
    if pl is not None and isinstance(data, pl.LazyFrame | pl.DataFrame):
        # A LazyFrame is a query: it runs once, here, and its result is read like any frame.
        name = f"the polars {type(data).__name__}"
        try:
            frame = data.collect() if isinstance(data, pl.LazyFrame) else data
        except Exception as exc:  # the query's own failure: nothing sent
            raise InputError(f"data: running {name} failed: {type(exc).__name__}: {exc}") from exc
        _no_objects(frame, name)
        return SpooledRows(frame, spool, name), POLARS
    if isinstance(data, pa.Table):
        return TableRows(data, "the Arrow table"), ARROW
    if isinstance(data, pa.RecordBatch):
        return TableRows(pa.Table.from_batches([data]), "the Arrow record batch"), ARROW
    if hasattr(data, "__arrow_c_stream__"):
        name = f"the {type(data).__name__} stream"
        _no_objects(data, name)
        return SpooledRows(data, spool, name), ARROW
    raise InputError(f"data: cannot read a {type(data).__module__}.{type(data).__name__}; pass a pandas "
                     "DataFrame, a pyarrow Table, an object with __arrow_c_stream__ (polars, DuckDB, "
                     "a RecordBatchReader), or the path of a .csv, .parquet or .jsonl file")


def _frame(data: Any) -> Any:
    """A pandas DataFrame as it is; a named Series as the one-column frame it reads as."""
    if hasattr(data, "columns"):
        return data
    if data.name is None:
        raise InputError("data: a pandas Series without a name; the prompt names its columns, so name it "
                         "(series.rename('body')) or pass series.to_frame('body')")
    return data.to_frame()


def _distinct(names: Sequence[Any], name: str) -> None:
    at: dict[Any, list[int]] = {}
    for i, column in enumerate(names):
        at.setdefault(column, []).append(i)
    dupes = [f"{column!r} (columns {', '.join(map(str, where[:-1]))} and {where[-1]})"
             for column, where in at.items() if len(where) > 1]
    if dupes:
        raise InputError(f"data: {name} has duplicate column names: {'; '.join(dupes[:5])}; the prompt "
                         "names columns, so each needs its own name: rename them")


def _from_pandas(df: Any, what: str) -> pa.Table:
    bad = [c for c in df.columns if not isinstance(c, str)]
    if bad:
        raise InputError(f"data: column names must be strings (templates name them), got {bad[:5]!r}; "
                         "rename them, e.g. df.columns = df.columns.astype(str)")
    _distinct(list(df.columns), what)
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise InputError(f"data: a column of {what} cannot be stored as one Arrow type ({exc}); "
                         "give that column one type, e.g. df[col] = df[col].astype(str)") from exc


def _no_objects(data: Any, name: str) -> None:
    """polars exports an Object column as the addresses of its Python objects: never a prompt's text."""
    if not type(data).__module__.startswith("polars"):
        return
    objects = [c for c, dtype in getattr(data, "schema", {}).items() if str(dtype) == "Object"]
    if objects:
        raise InputError(f"data: {name} has polars Object column(s) {', '.join(map(repr, objects))}, "
                         "which have no Arrow form; turn their values into text or numbers first")


def _unreadable(stream: Any, name: str, exc: Exception) -> str:
    """What to say when pyarrow cannot read a stream: which columns, or that it is not a table."""
    try:
        pa.chunked_array(stream)
    except (pa.ArrowException, TypeError, ValueError):
        pass
    else:
        return (f"data: {name} is one column, not a table ({exc}); pass a table, e.g. series.to_frame()")
    culprits = []
    for column in getattr(stream, "columns", []):  # a polars frame can be asked one column at a time
        try:
            pa.RecordBatchReader.from_stream(stream.select(column)).close()
        except Exception as why:  # any failure names the column
            dtype = getattr(stream, "schema", {}).get(column, "?")
            culprits.append(f"{column!r} ({dtype}: {why})")
    where = f": column(s) {', '.join(culprits)}" if culprits else f" ({exc})"
    return f"data: pyarrow cannot read {name}{where}; cast such columns to a type Arrow has, e.g. a string"


def _nullable(arrow_type: pa.DataType) -> Any:
    """Counts stay integers when some rows have none (a failed row): pandas' nullable types, not floats."""
    import pandas as pd  # only when pandas is what the caller works with

    return {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get(arrow_type)


def _series(column: pa.ChunkedArray) -> Any:
    return column.to_pandas(types_mapper=_nullable).array


def result(kind: str, data: Any, output: Path, summary: dict[str, Any], rows: Rows | None = None) -> Any:
    """The output file's answers in the caller's kind, after the caller's own columns (`rows`' when they
    are a table), with the run's summary on it."""
    table = read_output(output)
    if kind == PANDAS:
        # The caller's own columns, untouched (dtypes, index), then the answer columns.
        frame = _frame(data).copy()
        for name in table.column_names[len(frame.columns):]:
            frame[name] = _series(table.column(name))
        frame.attrs["batch"] = summary
        return frame
    if kind == PATH:
        frame = table.to_pandas(types_mapper=_nullable)
        frame.attrs["batch"] = summary
        return frame
    if isinstance(rows, TableRows):
        given = rows.caller_table()
        answers = table.select(list(range(given.num_columns, table.num_columns)))
        table = pa.Table.from_arrays([*given.columns, *answers.columns],
                                     schema=pa.schema([*given.schema.remove_metadata(), *answers.schema]))
    if kind == POLARS:
        # polars keeps no table metadata: the summary sits where pandas users find it, `out.attrs`.
        import polars as pl

        out: Any = pl.from_arrow(table.replace_schema_metadata(None))
        out.attrs = {"batch": summary}
        return out
    meta = dict(table.schema.metadata or {})
    meta[b"batch"] = json.dumps(summary).encode()
    return table.replace_schema_metadata(meta)
