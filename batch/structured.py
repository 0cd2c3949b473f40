"""Structured output: a json_schema's top-level properties as typed output columns.

This module owns what a `response_format` schema means for the output table: which columns it adds
(one per top-level property of an object schema, in the schema's order) and of which kind, and
whether one answer satisfies the schema's top level (it parses as a JSON object, `required`
properties are present, property types match, `additionalProperties: false` is honoured). Deeper
levels are not checked here: Groq's strict mode enforces them, and a nested value goes to the output
as JSON text anyway. It knows nothing of Arrow; `sink` maps the kinds to column types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Column kinds: a scalar JSON type gets a typed column, anything else (object, array, a union,
# no type at all) is written as JSON text.
SCALAR_KINDS = ("string", "integer", "number", "boolean")


@dataclass(frozen=True, slots=True)
class Shape:
    """The top level of an object schema: its properties and what is checked of them."""

    properties: tuple[tuple[str, str], ...]  # (name, kind): a SCALAR_KINDS member or "json"
    types: Mapping[str, tuple[str, ...]]  # name -> the JSON types the schema allows (empty: any)
    required: tuple[str, ...]
    closed: bool  # additionalProperties: false

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.properties)


def shape_of(response_format: Mapping[str, Any] | None) -> Shape | None:
    """The columns a job's response format adds, or None when it adds none (no object schema)."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return None
    props = schema.get("properties")
    if not isinstance(props, Mapping) or not props:
        return None
    properties, types = [], {}
    for name, sub in props.items():
        declared = sub.get("type") if isinstance(sub, Mapping) else None
        listed = declared if isinstance(declared, list) else [declared]
        allowed = tuple(t for t in listed if isinstance(t, str))
        types[str(name)] = allowed
        kind = allowed[0] if len(allowed) == 1 and allowed[0] in SCALAR_KINDS else "json"
        properties.append((str(name), kind))
    required = schema.get("required")
    listed_required = required if isinstance(required, list) else []
    return Shape(properties=tuple(properties), types=types,
                 required=tuple(r for r in listed_required if isinstance(r, str)),
                 closed=schema.get("additionalProperties") is False)


def _is(value: Any, json_type: str) -> bool:
    if json_type == "integer":  # JSON Schema: 3.0 is an integer; a boolean is not
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if json_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    kinds: dict[str, type | tuple[type, ...]] = {"string": str, "boolean": bool, "object": dict,
                                                 "array": list, "null": type(None)}
    return json_type not in kinds or isinstance(value, kinds[json_type])  # an unknown type is not judged


def check(shape: Shape, text: str | None) -> tuple[dict[str, Any], str | None]:
    """The answer's property values as cells (nested ones as JSON text), or {} and why it fails."""
    if text is None:
        return {}, "the answer is empty; the response format asks for a JSON object"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {}, f"the answer is not valid JSON ({exc}); the raw answer is in the text column"
    if not isinstance(data, dict):
        return {}, f"the answer is JSON but not an object (got {type(data).__name__}); the schema wants one"
    missing = [r for r in shape.required if r not in data]
    if missing:
        return {}, f"the answer lacks required propert{'y' if len(missing) == 1 else 'ies'} " + \
            ", ".join(map(repr, missing))
    extra = [k for k in data if k not in shape.types]
    if shape.closed and extra:
        return {}, f"the answer has properties the schema does not allow: {', '.join(map(repr, extra))}"
    for name, allowed in shape.types.items():
        if name in data and allowed and not any(_is(data[name], t) for t in allowed):
            return {}, (f"the answer's property {name!r} must be {' or '.join(allowed)}, got "
                        f"{json.dumps(data[name], ensure_ascii=False)[:60]}")
    return {name: _cell(kind, data.get(name)) for name, kind in shape.properties}, None


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False)
    if kind == "integer":
        return int(value)
    if kind == "number":
        return float(value)
    return value
