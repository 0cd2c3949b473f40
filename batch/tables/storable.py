"""Input columns as the output file can hold them: the same values, in a type the Parquet writer takes.

A table handed to the Python door (a polars, DuckDB or pandas frame, an Arrow table) may carry Arrow
types that Parquet cannot write, and the writer says so only when the first answers are written, after
the requests were paid. So each such column is given, before anything is sent, the nearest type that
holds the same values:

    dictionary<string_view | binary_view>   -> dictionary<string | binary>: a categorical (polars
                                               Categorical, Enum) stays one, same indices and categories
    run_end_encoded<v>                      -> v, decoded
    month_day_nano_interval (DuckDB INTERVAL) -> struct<months, days, nanoseconds>
    a nested type holding one of those      -> the same nesting around the replacement
    a union, or what no replacement fits    -> text: `text_of` each value (what a prompt would show)

Which way works is tried on the table's first rows (Arrow cast, else a rebuild from Python values,
else text) and written to an in-memory Parquet file; a column that no way fits is refused then, with
its name and type. The engine (prompts, output file) sees only the converted columns; the Python door
hands the caller's own columns back, so an Arrow result keeps its types exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.errors import InputError
from batch.render.prompts import as_text

_INTERVAL = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())])
_PLAIN = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}  # a dictionary's values
_PROBE_ROWS = 16


def text_of(value: Any) -> str:
    """A value as text: strings unchanged, nested values as JSON, bytes as UTF-8 with an invalid byte as
    \\xNN (never a replacement character: two different values stay two different texts)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return as_text(value)


def csv_native(t: pa.DataType) -> bool:
    """Whether Arrow's CSV writer writes this type's values as they are (else a CSV output gets text)."""
    if pa.types.is_dictionary(t):
        return csv_native(t.value_type)
    return bool(pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t)
                or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_date(t)
                or pa.types.is_time(t) or pa.types.is_timestamp(t) or pa.types.is_duration(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t))


def _target(t: pa.DataType) -> pa.DataType | None:
    """The type that holds `t`'s values in Parquet: `t` itself when it needs nothing; None for text."""
    if pa.types.is_union(t):
        return None
    if pa.types.is_run_end_encoded(t):
        return _target(t.value_type)
    if t == pa.month_day_nano_interval():
        return _INTERVAL
    if isinstance(t, pa.BaseExtensionType):  # uuid, json, pandas' period: Parquet keeps them as they are
        return t if _target(t.storage_type) == t.storage_type else None
    if pa.types.is_dictionary(t):
        values = _target(t.value_type)
        if values is None:
            return None
        values = _PLAIN.get(values, values)
        return t if values == t.value_type else pa.dictionary(t.index_type, values, t.ordered)
    children = [t.field(i) for i in range(t.num_fields)]
    if not children:
        return t
    targets = [_target(f.type) for f in children]
    if any(c is None for c in targets):
        return None
    if all(c == f.type for c, f in zip(targets, children, strict=True)):
        return t
    fields = [f.with_type(c) for f, c in zip(children, targets, strict=True)]
    return _nested(t, fields)


def _nested(t: pa.DataType, fields: list[pa.Field]) -> pa.DataType | None:
    """`t`'s nesting around new child fields (a map's one child is its struct of key and item)."""
    if pa.types.is_struct(t):
        return pa.struct(fields)
    if pa.types.is_map(t):
        entries = fields[0].type
        return pa.map_(entries.field(0), entries.field(1), t.keys_sorted)
    makers: dict[Callable[[pa.DataType], bool], Callable[[pa.Field], pa.DataType]] = {
        pa.types.is_list: pa.list_, pa.types.is_large_list: pa.large_list,
        pa.types.is_list_view: pa.list_view, pa.types.is_large_list_view: pa.large_list_view,
        pa.types.is_fixed_size_list: lambda f: pa.list_(f, t.list_size)}
    return next((make(fields[0]) for test, make in makers.items() if test(t)), None)


@dataclass(frozen=True)
class _Way:
    """How one column becomes storable: cast (a run-end encoded one decoded first), or rebuilt from its
    Python values (Arrow decodes no run-end encoded dictionary), or turned into text."""

    how: str  # "cast" | "rebuild" | "text"
    type: pa.DataType
    decode: bool

    def apply(self, column: pa.Array) -> pa.Array:
        if self.how == "cast":
            return (pc.run_end_decode(column) if self.decode else column).cast(self.type)
        values = column.to_pylist()
        if self.how == "rebuild":
            return pa.array(values, self.type)
        return pa.array([None if v is None else text_of(v) for v in values], pa.string())


class Storable:
    """The columns of tables of one schema, as the output file holds them: `schema`, and `apply(chunk)`."""

    def __init__(self, table: pa.Table, name: str) -> None:
        self._ways: dict[int, _Way] = {}
        fields = list(table.schema)
        probe = table.slice(0, _PROBE_ROWS).combine_chunks()
        columns = [probe.column(i).chunk(0) if probe.column(i).num_chunks else
                   pa.array([], f.type) for i, f in enumerate(fields)]
        if _writes([*zip(fields, columns, strict=True)]):
            self.schema = table.schema
            return
        for i, (field, column) in enumerate(zip(fields, columns, strict=True)):
            if _writes([(field, column)]):
                continue
            way = _way_for(field, column)
            if way is None:
                raise InputError(f"data: column {field.name!r} of {name} has the Arrow type {field.type}, "
                                 "which batch cannot write to its output file; cast it to a plainer type "
                                 "(a string, a number, a list) before the call")
            self._ways[i] = way
            # A replaced type's metadata (an extension's name) would mislabel the new values.
            fields[i] = pa.field(field.name, way.type, field.nullable)
        self.schema = pa.schema(fields, table.schema.metadata)

    def apply(self, chunk: pa.RecordBatch) -> pa.RecordBatch:
        if not self._ways:
            return chunk
        columns = [self._ways[i].apply(c) if i in self._ways else c for i, c in enumerate(chunk.columns)]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


def _way_for(field: pa.Field, column: pa.Array) -> _Way | None:
    """The first way that turns the column's first rows into values the Parquet writer takes."""
    decode = pa.types.is_run_end_encoded(field.type)
    target = _target(field.type)
    ways = [] if target is None else [_Way("cast", target, decode), _Way("rebuild", target, decode)]
    for way in [*ways, _Way("text", pa.string(), decode)]:
        try:
            done = way.apply(column)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            continue
        if _writes([(field.with_type(way.type).remove_metadata(), done)]):
            return way
    return None


def _writes(columns: list[tuple[pa.Field, pa.Array]]) -> bool:
    """Whether the Parquet writer takes these columns (some types fail only once a value is written)."""
    if not columns:
        return True
    try:
        table = pa.Table.from_arrays([c for _, c in columns], schema=pa.schema([f for f, _ in columns]))
        with pq.ParquetWriter(pa.BufferOutputStream(), table.schema) as writer:
            writer.write_table(table)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True
