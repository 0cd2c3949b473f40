"""JSON Lines input: one object a line, one column per key (first-seen order), in Arrow chunks.

A key whose values mix types or nest is kept as JSON text, so that every chunk has the same schema;
integers beyond int64 are text too. Read twice: `scan` for the schema and the row count (and any
unreadable line, named by its number), then `chunks` as often as the run needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch.errors import InputError


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if "\\ud" in line.lower():  # a \udXXXX escape may be a lone surrogate: not storable text
                try:
                    json.dumps(obj, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError(f"{path}:{lineno}: a string holds a lone surrogate escape "
                                     "(\\ud800-\\udfff); it is not valid text") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: each line must be a JSON object, "
                                 f"got {type(obj).__name__}")
            yield lineno, obj


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if -(2**63) <= v < 2**63 else "json"  # beyond int64: kept as text
    if isinstance(v, float):
        return "float"
    return "str" if isinstance(v, str) else "json"


_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}


def scan(path: Path) -> tuple[pa.Schema, int]:
    kinds: dict[str, set[str]] = {}
    rows = 0
    for _, obj in _jsonl_objects(path):
        rows += 1
        for key, value in obj.items():
            kinds.setdefault(key, set()).add(_kind(value))
    fields = []
    for key, ks in kinds.items():
        ks.discard("null")
        if ks == {"int", "float"}:
            ks = {"float"}
        kind = ks.pop() if len(ks) == 1 else "json"
        fields.append(pa.field(key, _ARROW.get(kind, pa.string())))
    return pa.schema(fields), rows


def chunks(path: Path, schema: pa.Schema, rows_per_chunk: int) -> Iterator[pa.RecordBatch]:
    as_text = [f.name for f in schema if f.type == pa.string()]
    rows: list[dict[str, Any]] = []
    for _, obj in _jsonl_objects(path):
        for name in as_text:  # nested or mixed values travel as JSON text
            v = obj.get(name)
            if v is not None and not isinstance(v, str):
                obj[name] = json.dumps(v, ensure_ascii=False)
        rows.append(obj)
        if len(rows) == rows_per_chunk:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=schema)
