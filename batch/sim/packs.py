"""Packs: several rows in one chat request, as the simulator reads them, answers them and damages them.

This module owns the pack's wire format, seen from the server, and the pack faults:

- a request is a pack (:func:`read_pack`) when its ``response_format`` schema is PACK-shaped (top-level
  properties exactly ``answers``, an array whose items have the properties ``id`` and ``answer``), in
  Groq's spelling (``{"type": "json_schema", "json_schema": {"name", "schema"}}``) or llama.cpp's
  (``{"type": "json_object", "schema"}``), AND the last line of the last user message's text (split on
  ``"\\n"`` only: JSON leaves U+2028 and friends unescaped) is a JSON array of objects of exactly a string
  ``id`` and a string ``prompt``. Anything else is no pack and is answered as a single request;
- the answer's text (:func:`pack_text`): ``{"answers": [{"id", "answer"}, ...]}`` in the items' order,
  given each item's own answer, which :mod:`.answers` computes (this module knows nothing of what the
  model says);
- the pack faults (:data:`PACK_FAULT_KINDS`), drawn per item by :func:`draw_damage` from a seeded RNG of
  the caller's: ``lose`` leaves the item out; ``repeat`` gives it twice, once with a wrong answer (the
  next item's whose answer differs, else its own altered) right after the right one, or right before it
  for an odd item index; ``rename`` gives its answer under an id that no item of the pack has.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PACK_FAULT_KINDS = ("lose", "repeat", "rename")


@dataclass(frozen=True)
class Pack:
    """A packed request's items, (id, prompt) in order, and the schema of one answer (ITEM)."""

    items: tuple[tuple[str, str], ...]
    item_schema: Any


def _pack_schema(response_format: object) -> dict[str, Any] | None:
    """The schema of a JSON ``response_format`` in either spelling, or None."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    elif response_format.get("type") == "json_object":
        schema = response_format.get("schema")
    else:
        return None
    return schema if isinstance(schema, dict) else None


def _item_schema(schema: dict[str, Any]) -> tuple[bool, Any]:
    """(True, ITEM) when the schema is PACK-shaped, else (False, None)."""
    props = schema.get("properties")
    if not isinstance(props, dict) or set(props) != {"answers"}:
        return False, None
    answers = props["answers"]
    items = answers.get("items") if isinstance(answers, dict) and answers.get("type") == "array" else None
    pinned = answers.get("prefixItems") if isinstance(answers, dict) and items is None else None
    if isinstance(pinned, list) and pinned:  # one schema an item, its id a `const` (llama.cpp's grammar)
        items = pinned[0]
    item_props = items.get("properties") if isinstance(items, dict) else None
    if not isinstance(item_props, dict) or not {"id", "answer"} <= set(item_props):
        return False, None
    return True, item_props["answer"]


def _last_user_text(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(messages, list) else []
    if not users:
        return None
    content = users[-1].get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")


def read_pack(body: dict[str, Any]) -> Pack | None:
    """The request's pack, or None when it is no pack (then it is answered as a single request)."""
    schema = _pack_schema(body.get("response_format"))
    if schema is None:
        return None
    shaped, item_schema = _item_schema(schema)
    text = _last_user_text(body) if shaped else None
    if text is None:
        return None
    try:
        array = json.loads(text.rsplit("\n", 1)[-1])
    except ValueError:
        return None
    if not isinstance(array, list):
        return None
    items: list[tuple[str, str]] = []
    for item in array:
        if not (isinstance(item, dict) and set(item) == {"id", "prompt"}
                and isinstance(item["id"], str) and isinstance(item["prompt"], str)):
            return None
        items.append((item["id"], item["prompt"]))
    return Pack(tuple(items), item_schema)


def pack_size(body: dict[str, Any]) -> int:
    """How many items the request packs; 0 when it is no pack."""
    pack = read_pack(body)
    return 0 if pack is None else len(pack.items)


def draw_damage(size: int, rate: float, kinds: Sequence[str], rng: random.Random) -> tuple[str | None, ...]:
    """What befalls each of a pack's `size` items: a kind of ``kinds``, or None (most often).

    Nothing is drawn when the rate is 0 or there are no kinds, so that a simulator without pack faults
    leaves its RNG where it was; otherwise two draws an item at most, in the items' order.
    """
    if rate <= 0 or not kinds:
        return (None,) * size
    return tuple(rng.choice(kinds) if rng.random() < rate else None for _ in range(size))


def _altered(value: Any) -> Any:
    """A value of the same shape that is certainly not `value`."""
    if isinstance(value, str):
        return value + " (again)"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, "again"]
    if isinstance(value, dict):
        return {k: _altered(v) for k, v in value.items()} if value else {"again": True}
    return "again"


def _wrong(answers: Sequence[Any], index: int) -> Any:
    """A wrong answer for item `index`: the next item's (the dangerous case) if it differs, else its own
    altered."""
    for step in range(1, len(answers)):
        other = answers[(index + step) % len(answers)]
        if other != answers[index]:
            return other
    return _altered(answers[index])


def _unused_id(id_: str, ids: set[str]) -> str:
    new = id_ + "-x"
    while new in ids:
        new += "x"
    return new


def pack_text(pack: Pack, answers: Sequence[Any], damage: Sequence[str | None] = ()) -> str:
    """The answer's JSON text: each item's answer under its id, in order, with `damage` (by item, None or
    missing: none) done to it."""
    ids = {id_ for id_, _ in pack.items}
    out: list[dict[str, Any]] = []
    for index, ((id_, _), right) in enumerate(zip(pack.items, answers, strict=True)):
        kind = damage[index] if index < len(damage) else None
        if kind == "lose":
            continue
        mine = {"id": _unused_id(id_, ids) if kind == "rename" else id_, "answer": right}
        twice = [{"id": id_, "answer": _wrong(answers, index)}] if kind == "repeat" else []
        # The wrong copy comes first for every other item: a client that takes the first copy shows.
        out += [*twice, mine] if index % 2 else [mine, *twice]
    return json.dumps({"answers": out}, ensure_ascii=False)
