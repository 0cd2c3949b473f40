"""More rows per request (`[task] rows-per-request`): a pack's request, and its answer taken apart.

    row requests ─► packer.Packer ─► Pack (one request) ─► pool ─► Pack.answers(completion)
                                                              ├─► each row's Answer (its own item)
                                                              └─► the other rows, in smaller packs

The wire format: the rows' shared messages once (the system message), then one user message: a
short instruction and, on its last line, a JSON array of `{"id": ..., "prompt": ...}` objects; the
answer is asked for with a json_schema response format: `{"answers": [{"id": ..., "answer": ...}]}`,
the answer a string for a text job, the job's own schema nested for a structured one.

A row takes the one item that carries its id and an answer of the right shape, and nothing else: an
item missing, repeated or invalid, an unknown id, or a pack cut short (`finish_reason` length) or
not JSON, sends the rows without a good item again, in packs of half the size, down to one row; a
row alone is asked again until its `max-attempts` are spent (not when its answer was cut short: it
would be again), then fails (with --retry-failed, it is sent again). A model
that swaps two items' ids cannot be caught by ids alone; nothing else gives a row another's answer.

Usage is apportioned so a run's columns add up to what the server counted (`shares`): the prompt
tokens by each row's estimated share (the shared part in equal shares, then its item), completion
and reasoning tokens by each row's share of the answer's items; the tokens of a pack that had to
be sent again stay with the rows it carried, added to what their later packs cost.

How rows become packs is `packer`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from batch.job.schema import Shape, check
from batch.records import Answer, Completion, Request
from batch.render import spelling
from batch.render.group import JSON, fingerprint
from batch.render.shares import Spent, shares


@dataclass(frozen=True, slots=True)
class Member:
    """One row in a pack: its fingerprint (its answer's key), its item, what earlier packs cost it."""

    fingerprint: str
    row: int
    id: str
    item: str  # {"id": ..., "prompt": ...}, encoded once
    tokens: int  # the item's estimated prompt tokens
    spent: Spent = Spent.NONE
    attempts: int = 0  # requests made for it before this pack


@dataclass(frozen=True, slots=True)
class Base:
    """What a pack's rows share: the body around the array, and how its answer is checked."""

    head: bytes  # the body up to the array (inside the user message's JSON string)
    tail: bytes  # the body after it
    shared_tokens: int  # the estimate of head + tail
    budget: int  # the completion budget counted against the limits
    text_job: bool  # the answer is a string (else the job's JSON)
    shape: Shape | None  # the job's own schema, each item's answer checked against it
    tries: int = 1  # requests a row alone is given to bring back a usable item (`max-attempts`)
    # llama.cpp's servers turn the schema into a grammar that also holds the count and the ids in
    # order: for them `tail` ends before the response format's value, made for each pack from this
    # item schema, and `end` follows it (None: the format is in `tail`, the same for every pack).
    pinned: Any = None
    end: bytes = b""

    def body(self, members: Sequence[Member]) -> bytes:
        # The array goes inside a JSON string: its own quotes and backslashes escaped once more. The
        # count is said on the line before it: a model that answers fewer items does it less.
        n = len(members)
        array = JSON.encode(f"The array holds {n} item{'s' if n != 1 else ''}: give {n} answer"
                            f"{'s' if n != 1 else ''}, one for each id.\n"
                            "[" + ",".join(m.item for m in members) + "]")
        pinned = b"" if self.pinned is None else spelling.pinned_pack(self.pinned, [m.id for m in members])
        return self.head + array[1:-1].encode() + self.tail + pinned + self.end


# A row whose pack's answer had no good item for it, stored (a transient failure that keeps its share
# of the tokens) when it cannot be sent again at once: a Batch API pack (the next round or run sends
# it) or a pack the pool dropped as the run stopped. `resumed` sends it on from where it was.
RESENT = "its pack's answer held no usable item for this row; it is sent again in a smaller pack"


def resent(m: Member, rows: int) -> Answer:
    """A row of a pack of `rows` rows, to be sent again: what it cost so far kept."""
    failed = Answer.failure(m.fingerprint, RESENT, permanent=False, attempts=m.attempts)
    return m.spent.charged(replace(failed, rows_in_request=rows))


def resumed(last: Answer | None) -> tuple[int | None, Spent, int]:
    """How a row goes again after its stored answer `last`: for a `RESENT` one, in a pack half the size
    of its last, with what it cost and the attempts it took (else as a new row: None, nothing, 0)."""
    if last is None or last.error != RESENT:
        return None, Spent.NONE, 0
    return max(1, (last.rows_in_request or 2) // 2), Spent.of(last), last.attempts


class Pack:
    """A pack in flight: its rows, and how its answer comes apart (`records.Carried`)."""

    __slots__ = ("base", "members")

    def __init__(self, base: Base, members: tuple[Member, ...]) -> None:
        self.base, self.members = base, members

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(m.fingerprint for m in self.members)

    def request(self) -> Request:
        body = self.base.body(self.members)
        est = self.base.shared_tokens + sum(m.tokens for m in self.members) + self.base.budget
        return Request(fingerprint=fingerprint(body), body=body, est_tokens=est, row=self.members[0].row,
                       pack=self)

    def answers(self, completion: Completion, *, attempts: int,
                latency_s: float | None) -> tuple[list[Answer], list[Request]]:
        good, again = self.outcome(completion, attempts=attempts, latency_s=latency_s)
        return good, self._regroup(again, self.smaller)

    @property
    def smaller(self) -> int:
        """The size of the packs its rows go in when they are sent again."""
        return max(1, len(self.members) // 2)

    def outcome(self, completion: Completion, *, attempts: int,
                latency_s: float | None) -> tuple[list[Answer], list[Member]]:
        """Each row's answer that came back whole (or, for a row alone, its failure), and the rows to
        send again, each charged its share of this request and counting it among its attempts."""
        items, problem = _items(completion)
        cut = completion.text is None or completion.finish_reason == "length"
        by_id: dict[str, list[Any]] = {}
        sizes: dict[str, int] = {}
        for item in items:
            key = _id(item.get("id"))
            by_id.setdefault(key, []).append(item.get("answer"))
            sizes[key] = sizes.get(key, 0) + len(JSON.encode(item))
        lone = len(self.members) == 1 and len(items) == 1  # one row, one item: it can be no one else's
        texts: list[str | None] = []
        whys: list[str] = []
        for m in self.members:
            got = by_id.get(m.id) or (next(iter(by_id.values())) if lone else [])
            text, why = (None, problem) if problem else self._one(got)
            texts.append(text)
            whys.append(why or "")
        spent = self._spent(completion, [sizes.get(m.id, 0) for m in self.members])
        good: list[Answer] = []
        again: list[Member] = []
        for m, text, why, cost in zip(self.members, texts, whys, spent, strict=True):
            paid = m.spent + cost
            if text is not None:
                good.append(_answer(m, paid, completion, text=text, attempts=m.attempts + attempts,
                                    latency_s=latency_s, rows=len(self.members)))
            elif len(self.members) > 1 or (not cut and m.attempts + attempts < self.base.tries):
                # A row alone is asked again while it has attempts left: a model that lost or mangled
                # its item may not the next time. A cut answer would be cut again: no.
                again.append(replace(m, spent=paid, attempts=m.attempts + attempts))
            else:
                good.append(_answer(m, paid, completion, text=None, attempts=m.attempts + attempts,
                                    latency_s=latency_s, rows=1, error=why, permanent=True))
        return good, again

    def shelved(self) -> list[Answer]:
        """Its rows that earlier packs cost something, `RESENT`: the pack is dropped unsent (the run
        stops), and the next run adds what they cost to their answers (`resumed`)."""
        # As if from the pack they were in before, about twice this one: they go on in packs of this size.
        return [resent(m, 2 * len(self.members)) for m in self.members if m.spent != Spent.NONE]

    def split(self) -> list[Request]:
        return self._regroup(list(self.members), self.smaller)

    def failures(self, error: str, *, permanent: bool, attempts: int,
                 request_id: str | None) -> list[Answer]:
        return [m.spent.charged(Answer.failure(m.fingerprint, error, permanent=permanent,
                                               attempts=m.attempts + attempts, request_id=request_id))
                for m in self.members]

    def _one(self, got: list[Any]) -> tuple[str | None, str | None]:
        """A row's answer from the items that carry its id, or why there is none."""
        if not got:
            return None, "the pack's answer holds no item with this row's id"
        if len(got) > 1:
            return None, f"the pack's answer holds {len(got)} items with this row's id"
        value = got[0]
        if self.base.text_job:
            if not isinstance(value, str):
                return None, f"the item's answer is {type(value).__name__}, not text"
            return value, None
        text = JSON.encode(value)
        if self.base.shape is not None:
            _, why = check(self.base.shape, text)
            if why is not None:
                return None, why
        elif not isinstance(value, dict):
            return None, f"the item's answer is {type(value).__name__}, not a JSON object"
        return text, None

    def _spent(self, c: Completion, sizes: list[int]) -> list[Spent]:
        """This request's usage, a share for each row (see the module's docstring)."""
        n = len(self.members)
        shared = self.base.shared_tokens / n
        prompt = [shared + m.tokens for m in self.members]
        answer = [float(s) for s in sizes] if any(sizes) else [1.0] * n
        ins = shares(c.input_tokens, prompt)
        outs = shares(c.output_tokens, answer)
        cached = shares(c.cached_tokens, prompt)
        thought = shares(c.reasoning_tokens, answer)
        return [Spent(*t) for t in zip(ins, outs, cached, thought, strict=True)]

    def _regroup(self, members: list[Member], size: int) -> list[Request]:
        return [Pack(self.base, tuple(members[i:i + size])).request() for i in range(0, len(members), size)]


def _answer(m: Member, paid: Spent, c: Completion, *, text: str | None, attempts: int,
            latency_s: float | None, rows: int, error: str | None = None, permanent: bool = False) -> Answer:
    return paid.charged(Answer(
        fingerprint=m.fingerprint, text=text, finish_reason=c.finish_reason, request_id=c.request_id,
        model=c.model, latency_s=latency_s, queue_time=c.queue_time, total_time=c.total_time,
        attempts=attempts, error=error, permanent=permanent, rows_in_request=rows))


def _items(c: Completion) -> tuple[list[dict[str, Any]], str | None]:
    """The answer's items, or why it has none (then every row is sent again, or fails alone)."""
    if c.text is None or c.finish_reason == "length":
        return [], (f"the model's answer was cut short (finish_reason {c.finish_reason!r}): raise "
                    "max-new-tokens, or lower rows-per-request" if c.finish_reason == "length"
                    else "the model returned no text")
    try:
        data = json.loads(c.text)
    except ValueError as exc:
        return [], f"the pack's answer is not valid JSON ({exc})"
    found = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(found, list):
        return [], 'the pack\'s answer is not an object with an "answers" array'
    return [i for i in found if isinstance(i, dict)], None


def _id(value: Any) -> str:
    # An id answered as a number is still that id (a model may drop the quotes of "17").
    return value if isinstance(value, str) else JSON.encode(value) if value is not None else ""


def tokens(text: str) -> int:
    """Estimated tokens, as `prompts.estimate_prompt_tokens` counts them: UTF-8 bytes / 4."""
    return -(-len(text.encode()) // 4)
