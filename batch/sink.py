"""The output table: every input row once, in input order, with the answer columns appended.

Written to a temporary file beside the target and renamed into place only when complete, so a
failure at any point leaves the previous output untouched. Parquet by default; CSV when the output
path ends in .csv.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .records import Answer

# (column, type, Answer attribute); the text column's name comes from the job.
_ANSWER_FIELDS: list[tuple[str, pa.DataType]] = [
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("total_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()), ("cached_tokens", pa.int64()), ("finish_reason", pa.string()),
    ("error", pa.string()), ("attempts", pa.int64()), ("latency_s", pa.float64()),
    ("request_id", pa.string()), ("model", pa.string()), ("queue_time", pa.float64()),
    ("total_time", pa.float64()),
]

Outcome = Answer | str  # an answer, or the reason the row never became a request


class OutputWriter:
    def __init__(self, path: Path, fmt: str, input_schema: pa.Schema, text_column: str) -> None:
        self.path, self.format = path, fmt
        self.schema = pa.schema([*input_schema.remove_metadata(), pa.field(text_column, pa.string()),
                                 *(pa.field(n, t) for n, t in _ANSWER_FIELDS)])
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: pq.ParquetWriter | pacsv.CSVWriter
        if fmt == "csv":
            self._writer = pacsv.CSVWriter(self._tmp, self.schema)
        else:
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(self, batch: pa.RecordBatch, outcomes: Sequence[Outcome]) -> None:
        assert len(outcomes) == batch.num_rows, "one outcome per input row"
        answers = [o if isinstance(o, Answer) else None for o in outcomes]
        text = pa.array([a.text if a is not None and a.ok else None for a in answers], pa.string())
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
        out = pa.RecordBatch.from_arrays([*batch.columns, *cols], schema=self.schema)
        self._writer.write_batch(out)
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Close the temporary file, make it durable, and move it into place."""
        self._writer.close()
        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)

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


ANSWER_COLUMN_NAMES = tuple(n for n, _ in _ANSWER_FIELDS)
