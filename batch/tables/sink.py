"""The output table: every input row once, in input order, with the answer columns appended.

With a json_schema response format, the schema's top-level properties follow the answer columns, one
typed column each (`structured` says which; nested values are JSON text).

Written to a temporary file beside the target and renamed into place only when complete, so a
failure at any point leaves the previous output untouched. Parquet by default; CSV when the output
path ends in .csv, where an input column CSV cannot hold is written as text (`storable.text_of`: a list,
struct or map as JSON, a string_view as its string, bytes as UTF-8).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch import fields
from batch.job.schema import Shape
from batch.records import Answer
from batch.tables.storable import csv_native, text_of

# The answer columns after the text column, each the Answer attribute of that name, in the order and
# with the Arrow types of `batch.fields`. The text column's name comes from the job.
_ANSWER_FIELDS = [(f.name, f.arrow) for f in fields.OUTPUT[1:]]

_KIND_TYPES: dict[str, pa.DataType] = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
                                       "boolean": pa.bool_(), "json": pa.string()}

Outcome = Answer | str  # an answer, or the reason the row never became a request


class OutputWriter:
    def __init__(self, path: Path, fmt: str, input_schema: pa.Schema, text_column: str,
                 shape: Shape | None = None) -> None:
        self.path, self.format = path, fmt
        self.properties = shape.properties if shape else ()
        inputs = list(input_schema.remove_metadata())
        # Arrow's CSV writer refuses lists, structs, maps, views and extensions, and fails on bytes that are
        # not UTF-8 only when it meets them: such input columns go into a CSV output as text.
        self._as_text = [i for i, f in enumerate(inputs) if fmt == "csv" and not csv_native(f.type)]
        for i in self._as_text:
            inputs[i] = pa.field(inputs[i].name, pa.string(), metadata=inputs[i].metadata)
        self.schema = pa.schema([*inputs, pa.field(text_column, fields.TEXT.arrow),
                                 *(pa.field(n, t) for n, t in _ANSWER_FIELDS),
                                 *(pa.field(n, _KIND_TYPES[k]) for n, k in self.properties)])
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: pq.ParquetWriter | pacsv.CSVWriter
        if fmt == "csv":
            self._writer = pacsv.CSVWriter(self._tmp, self.schema)
        else:
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(self, chunk: pa.RecordBatch, outcomes: Sequence[Outcome],
              cells: Sequence[Mapping[str, Any]] | None = None) -> None:
        """One output chunk; `cells` holds each row's structured property values ({} for none)."""
        assert len(outcomes) == chunk.num_rows, "one outcome per input row"
        answers = [o if isinstance(o, Answer) else None for o in outcomes]
        # A failed request has no text; an answer that failed the response format keeps its raw text,
        # so the user can see what the model wrote.
        text = pa.array([None if a is None else a.text for a in answers], fields.TEXT.arrow)
        cols = [text]
        for name, typ in _ANSWER_FIELDS:
            values: list[object]
            if name == "error":
                values = [o if isinstance(o, str) else o.error for o in outcomes]
            elif name == "attempts":
                values = [0 if a is None else a.attempts for a in answers]
            else:
                values = [None if a is None else getattr(a, name) for a in answers]
            cols.append(pa.array(values, typ))
        rows = cells or [{}] * chunk.num_rows
        cols += [pa.array([c.get(name) for c in rows], _KIND_TYPES[kind]) for name, kind in self.properties]
        out = pa.RecordBatch.from_arrays([*self._inputs(chunk), *cols], schema=self.schema)
        self._writer.write_batch(out)
        self.rows += chunk.num_rows

    def write_columns(self, chunk: pa.RecordBatch, text: pa.Array, answers: Mapping[str, pa.Array],
                      cells: Sequence[Mapping[str, Any]] | None = None) -> None:
        """One output chunk from ready columns: the text and each answer column by name (cast to its
        type), as `write` builds them from answers one by one."""
        cols = [text.cast(fields.TEXT.arrow), *(answers[name].cast(typ) for name, typ in _ANSWER_FIELDS)]
        rows = cells or [{}] * chunk.num_rows
        cols += [pa.array([c.get(name) for c in rows], _KIND_TYPES[kind]) for name, kind in self.properties]
        out = pa.RecordBatch.from_arrays([*self._inputs(chunk), *cols], schema=self.schema)
        self._writer.write_batch(out)
        self.rows += chunk.num_rows

    def _inputs(self, chunk: pa.RecordBatch) -> list[pa.Array]:
        """The input columns as written: those CSV cannot hold as text."""
        inputs = list(chunk.columns)
        for i in self._as_text:
            values = inputs[i].to_pylist()
            inputs[i] = pa.array([None if v is None else text_of(v) for v in values], pa.string())
        return inputs

    def commit(self) -> None:
        """Close the temporary file, make it durable, and move it into place."""
        self._writer.close()
        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        # The rename lives in the folder: until the folder is synced, a power cut may bring back the
        # previous output (or none) even though the new one's bytes are on disk.
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()
