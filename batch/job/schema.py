"""Structured output: a json_schema answer checked against the whole schema, and the schema's top-level
properties as typed output columns.

This module owns what a `response_format` schema means for the output table: which columns it adds
(one per top-level property of an object schema, in the schema's order) and of which kind, and
whether one answer is acceptable. An answer is acceptable when it parses as JSON (NaN and Infinity
are not JSON), satisfies the WHOLE schema — nested objects, arrays, enums, `required`,
`additionalProperties` — as the `jsonschema` package judges it, and each typed cell fits its column:
an integer within int64, a finite number. A value that fits no column would otherwise be stored as
a good answer and then break the output of every later run.

An answer is judged when it arrives (`judge`: a failed answer keeps its raw text and is not re-sent,
except with --retry-failed) and again when the output is written (`check`), so a store written by an
earlier version, which kept such answers as good ones, heals. It knows nothing of Arrow; `sink` maps
the kinds to column types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from batch.records import Answer

if TYPE_CHECKING:
    import jsonschema

# jsonschema (and the referencing and attrs packages under it) is imported by the functions that use
# it, when a job has a json_schema response format: 40-90 ms of start-up every other run does not need.

# Column kinds: a scalar JSON type gets a typed column, anything else (object, array, a union,
# no type at all) is written as JSON text.
SCALAR_KINDS = ("string", "integer", "number", "boolean")
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Shape:
    """A json_schema response format: its top-level properties as columns, and the schema's checker."""

    properties: tuple[tuple[str, str], ...]  # (name, kind): a SCALAR_KINDS member or "json"; may be empty
    validator: Any = field(compare=False, repr=False)  # a jsonschema validator of the whole schema

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.properties)


def schema_of(response_format: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, Mapping) else None


def schema_problem(response_format: Mapping[str, Any] | None) -> str | None:
    """Why the schema is not a valid JSON Schema (answers could never be checked), or None."""
    schema = schema_of(response_format)
    if schema is None:
        return None
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path))
        return f"the schema is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
    return None


def shape_of(response_format: Mapping[str, Any] | None) -> Shape | None:
    """How answers are checked and which columns they add; None for no json_schema format."""
    schema = schema_of(response_format)
    if schema is None:
        return None
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    props = schema.get("properties") if schema.get("type") == "object" else None
    properties = []
    for name, sub in (props.items() if isinstance(props, Mapping) else ()):
        declared = sub.get("type") if isinstance(sub, Mapping) else None
        listed = declared if isinstance(declared, list) else [declared]
        allowed = tuple(t for t in listed if isinstance(t, str))
        kind = allowed[0] if len(allowed) == 1 and allowed[0] in SCALAR_KINDS else "json"
        properties.append((str(name), kind))
    return Shape(properties=tuple(properties), validator=validator)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check(shape: Shape, text: str | None) -> tuple[dict[str, Any], str | None]:
    """The answer's property values as cells (nested ones as JSON text), or {} and why it fails."""
    if text is None:
        return {}, "the answer is empty; the response format asks for JSON"
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        return {}, f"the answer is not valid JSON ({exc}); the raw answer is in the text column"
    if shape.properties and not isinstance(data, dict):
        return {}, f"the answer is JSON but not an object (got {type(data).__name__}); the schema wants one"
    import jsonschema
    import referencing.exceptions

    try:
        error = jsonschema.exceptions.best_match(shape.validator.iter_errors(data))
    except (jsonschema.SchemaError, referencing.exceptions.Unresolvable) as exc:
        return {}, f"the answer could not be checked: the schema is unusable ({exc})"
    if error is not None:
        return {}, _describe(error)
    cells: dict[str, Any] = {}
    for name, kind in shape.properties:
        cell, problem = _cell(kind, data.get(name))
        if problem:
            return {}, f"the answer's property {name!r} {problem}"
        cells[name] = cell
    return cells, None


def judge(shape: Shape | None, answer: Answer) -> Answer:
    """An answer as it arrives: one that fails the response format becomes a failed answer that keeps
    its raw text (permanent: the same request would likely be answered the same way)."""
    if shape is None or not answer.ok:
        return answer
    _, problem = check(shape, answer.text)
    return answer if problem is None else replace(answer, error=problem, permanent=True)


def _describe(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    got = json.dumps(error.instance, ensure_ascii=False)[:60]
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        what = " or ".join(map(str, wanted))
        return (f"the answer's property {path!r} must be {what}, got {got}" if path
                else f"the answer must be {what}, got {got}")
    return f"the answer's property {path!r} does not fit the schema: {error.message}" if path \
        else f"the answer does not fit the schema: {error.message}"


def _cell(kind: str, value: Any) -> tuple[Any, str | None]:
    """A value as its column holds it, or why it cannot be held (the schema allowed it)."""
    if value is None:
        return None, None
    if kind == "integer":
        whole = int(value) if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)) \
            else None
        if whole is None or not INT64[0] <= whole <= INT64[1]:
            return None, f"is {_short(value)}, beyond what an integer column (int64) holds"
        return whole, None
    if kind == "number":
        try:
            real = float(value)
        except OverflowError:  # an integer with hundreds of digits
            real = math.inf
        if not math.isfinite(real):
            return None, f"is {_short(value)}, beyond what a number column (float64) holds"
        return real, None
    if kind == "json":
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False), None
        except ValueError:
            return None, "holds a number too large for JSON text (it overflows to infinity)"
    return value, None


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"
