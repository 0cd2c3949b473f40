"""The SQL door's vectors: a column of prompts in (as DuckDB hands an Arrow UDF its argument), each row's
answer out as an Arrow array of the same length, in the same order.

    prompts(array)            -> list[str | None]                      the function's argument
    chunk(column, prompts)    -> a one-column chunk of them, for the renderer
    texts(answers)            -> string array, NULL where a row failed or had no prompt
    details(answers, model)   -> struct array (`DETAILS`), NULL where a row had no prompt

The struct's fields are the answer's own (`batch.fields`: text, error, input and output tokens) and its
cost at the model's list price (`job.catalog`; NULL for a model the catalog does not price).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from batch import fields
from batch.job.catalog import cost_usd
from batch.records import Answer

_TYPES = {f.name: f.arrow for f in fields.FIELDS}
# The details struct, with the answer's own Arrow types (cost is not an answer field: a price).
DETAILS = pa.struct([(name, _TYPES[name]) for name in ("text", "error", "input_tokens", "output_tokens")]
                    + [("cost_usd", pa.float64())])


def prompts(values: Any) -> list[str | None]:
    """The argument of a call: an Arrow array or chunked array of strings (the UDF's vector)."""
    column = values.cast(pa.string()) if values.type != pa.string() else values
    out: list[str | None] = column.to_pylist()
    return out


def chunk(column: str, values: Sequence[str]) -> pa.RecordBatch:
    """Prompts as a chunk of one string column, as the job's renderer takes rows."""
    return pa.record_batch({column: pa.array(values, pa.string())})


def texts(answers: Sequence[Answer | None]) -> pa.Array:
    return pa.array([a.text if a is not None and a.ok else None for a in answers], _TYPES["text"])


def details(answers: Sequence[Answer | None], model: str) -> pa.Array:
    rows = [None if a is None else {
        "text": a.text if a.ok else None, "error": a.error, "input_tokens": a.input_tokens,
        "output_tokens": a.output_tokens,
        "cost_usd": None if a.input_tokens is None and a.output_tokens is None else
        cost_usd(model, a.input_tokens or 0, a.output_tokens or 0, a.cached_tokens or 0),
    } for a in answers]
    return pa.array(rows, DETAILS)
