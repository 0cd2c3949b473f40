"""Rows into packs (`[task] rows-per-request`): a row request's prompt taken out of its body, rows that
share everything else collected into one request of the wire format `packs` describes.

Which rows pack: those whose request is one user message of text after at most a system message
(the renderer gives exactly those a packed fingerprint, `group.packed`); a row with images or a
chat history goes alone, as before. Rows pack only with rows that share the model, the system
message and every parameter; a pack is at most `rows-per-request` rows and small enough that the
shared part, the items and the completion budget fit the tokens-per-minute limit and the model's
context. The job's `max-new-tokens` is the whole pack's budget (sent as it is); its response
format becomes each item's answer schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from batch.job.catalog import limits_for
from batch.job.schema import Shape
from batch.records import Request
from batch.render import spelling
from batch.render.group import JSON
from batch.render.packs import Base, Member, Pack, tokens
from batch.render.prompts import Renderer
from batch.render.shares import Spent

INSTRUCTION = (
    'Each item of the JSON array on the last line is a separate request: answer its "prompt" on its own, '
    "as if it were the only one. Reply with a JSON object whose \"answers\" array holds one object for "
    'each item: its "id", copied exactly, and its "answer".\n')
SCHEMA_NAME = "rows"
# Open packs of different shared parts (a templated system message) held at once; the oldest goes out.
OPEN_PACKS = 16
_BUDGET_KEYS = ("max_completion_tokens", "max_tokens")


def pack_schema(item: Any) -> dict[str, Any]:
    """The pack's answer: an object whose one array holds `{"id", "answer"}` objects (strict-ready)."""
    one = {"type": "object", "properties": {"id": {"type": "string"}, "answer": item},
           "required": ["id", "answer"], "additionalProperties": False}
    return {"type": "object", "properties": {"answers": {"type": "array", "items": one}},
            "required": ["answers"], "additionalProperties": False}


class Packer:
    """Collects row requests into packs: at most `size` rows, sharing everything but their prompt, and
    small enough that the shared part, the items and the budget fit `limit()` tokens (the tokens-per-
    minute limit and the model's context). A row that cannot be packed is handed back as it is."""

    def __init__(self, size: int, *, server: str | None, shape: Shape | None, budget: int,
                 limit: Callable[[], float], tries: int = 1) -> None:
        self.size, self._server, self._shape, self._budget, self._limit = size, server, shape, budget, limit
        self.tries = tries  # requests a row alone is given to bring back a usable item
        self._open: dict[bytes, tuple[Base, list[Member]]] = {}
        self._bases: dict[bytes, Base] = {}
        self.held: set[str] = set()  # fingerprints in open packs: not yet with the pool

    def __contains__(self, fp: str) -> bool:
        return fp in self.held

    def add(self, request: Request, *, size: int | None = None, spent: Spent = Spent.NONE,
            attempts: int = 0) -> Iterator[Request]:
        """What goes out now: the request itself (a row that does not pack), a full pack, or nothing.
        A row's id is its place in the input ("1" is the first row): short, unique, and easy for a
        model to copy exactly (a key could be long, or hold anything). `size`: a smaller pack for this
        row (it was in a pack whose answer had no good item for it); `spent`, `attempts`: what its
        earlier packs cost it."""
        item_id = str(request.row + 1)
        parsed = _parse(request.body)
        if parsed is None:
            yield request
            return
        key, prompt, body = parsed
        base = self._bases.get(key) or self._base(key, body)
        limit = min(size or self.size, self.size)
        key += b"\x00%d" % limit  # rows sent again go together, in packs of their own size
        item = JSON.encode({"id": item_id, "prompt": prompt})
        size_ = tokens(item)
        open_ = self._open.get(key)
        if open_ is not None and (any(m.id == item_id for m in open_[1])
                                  or not self._fits(base, open_[1], size_)):
            yield self._close(key)
            open_ = None
        if open_ is None:
            if len(self._open) >= OPEN_PACKS:
                yield self._close(next(iter(self._open)))
            open_ = self._open[key] = (base, [])
        open_[1].append(Member(request.fingerprint, request.row, item_id, item, size_, spent, attempts))
        self.held.add(request.fingerprint)
        if len(open_[1]) >= limit:
            yield self._close(key)

    def flush(self) -> Iterator[Request]:
        while self._open:
            yield self._close(next(iter(self._open)))

    def _fits(self, base: Base, members: list[Member], more: int) -> bool:
        total = base.shared_tokens + base.budget + sum(m.tokens for m in members) + more
        return total <= self._limit()

    def _close(self, key: bytes) -> Request:
        base, members = self._open.pop(key)
        self.held.difference_update(m.fingerprint for m in members)
        return Pack(base, tuple(members)).request()

    def _base(self, key: bytes, body: dict[str, Any]) -> Base:
        fmt = body.pop("response_format", None)
        item, strict = _item_schema(fmt)
        sent_budget = {k: body.pop(k) for k in _BUDGET_KEYS if k in body}
        rf: dict[str, Any] = {"type": "json_schema",
                              "json_schema": {"name": SCHEMA_NAME, "schema": pack_schema(item)}}
        if strict or (strict is None and str(body.get("model", "")).startswith("openai/gpt-oss")):
            rf["json_schema"]["strict"] = True  # constrained decoding where Groq offers it
        mark, pin = "\x00rows\x00", "\x00format\x00"
        body["messages"][-1]["content"] = INSTRUCTION + mark
        spelled = spelling.response_format_for(self._server, rf)
        llama = self._server == spelling.LLAMA_CPP
        whole = JSON.encode({**body, **sent_budget, "response_format": pin if llama else spelled})
        head, tail = whole.split(JSON.encode(mark)[1:-1], 1)
        tail, end = tail.split(JSON.encode(pin), 1) if llama else (tail, "")
        shared = tokens(whole) + (tokens(JSON.encode(rf)) if llama else 0)  # the format, made later
        base = Base(head=head.encode(), tail=tail.encode(), shared_tokens=shared, budget=self._budget,
                    text_job=fmt is None, shape=self._shape, tries=self.tries,
                    pinned=item if llama else None, end=end.encode())
        self._bases[key] = base
        return base


def packer_for(renderer: Renderer, shape: Shape | None, *, tries: int,
               tokens_per_minute: Callable[[], float] | None = None) -> Packer | None:
    """A run's packer (None: one row a request): packs of up to `rows-per-request` rows, each small
    enough for the model's context and, where a per-minute limit applies, for `tokens_per_minute()`
    as the pacer knows it then (the Batch API paces itself: none)."""
    if not renderer.packs:
        return None
    context = float(limits_for(renderer.model).context_window)
    return Packer(renderer.rows_per_request, server=renderer.server, shape=shape,
                  budget=renderer.completion_budget, tries=tries,
                  limit=lambda: min(tokens_per_minute(), context) if tokens_per_minute else context)


def _item_schema(fmt: Any) -> tuple[Any, bool | None]:
    """An item's answer schema from the job's response format (in either server's spelling), and
    whether the job asked for strict decoding (None: it did not say)."""
    if not isinstance(fmt, dict):
        return {"type": "string"}, None
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        return spec.get("schema") or {"type": "object"}, spec.get("strict")
    return fmt.get("schema") or {"type": "object"}, None


def _parse(body: bytes) -> tuple[bytes, str, dict[str, Any]] | None:
    """A row request's shared part (a key), its prompt text and its body; None when it does not pack:
    anything but one user message of text after at most a system message."""
    data = json.loads(body)
    chat = data.get("messages")
    if not isinstance(chat, list) or not chat or len(chat) > 2:
        return None
    *before, last = chat
    if last.get("role") != "user" or not isinstance(last.get("content"), str):
        return None
    if any(m.get("role") != "system" or not isinstance(m.get("content"), str) for m in before):
        return None
    prompt = last["content"]
    last["content"] = ""
    return JSON.encode(data).encode(), prompt, data
