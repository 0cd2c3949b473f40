"""Frozen records passed between the stages; this module imports nothing from batch.

    prompts ─► Request ─► pool ─► client ─► Completion ─► pool ─► Answer ─► store ─► sink
                                     └────► RateInfo ──► limits

Frozen to the type checker (`record`: mypy refuses an assignment to a field), not at run time: a
frozen dataclass's `__init__` sets each field through `object.__setattr__`, three times slower than a
plain slotted one (4.4 against 1.5 us for an Answer), and a row makes three or four of these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A dataclass with slots, frozen as far as the type checker knows (see the module's docstring)."""
    return dataclass(slots=True)(cls)


@record
class Request:
    """One chat request, rendered from one row (several rows may share it), or a pack of rows.

    `body` is the exact JSON bytes that will be posted; `fingerprint` is a hash of those bytes, so
    two rows that would send the same thing share one answer. A pack (`pack` set) carries several
    rows' requests in one: its fingerprint only names it while it is in flight, each of its rows is
    answered under the row's own fingerprint (`pack.fingerprints`).
    """

    fingerprint: str
    body: bytes
    est_tokens: int  # estimated prompt tokens + the completion budget (what Groq counts against TPM)
    row: int  # the first input row (0-based) that asked for it, for messages
    pack: Carried | None = None

    @property
    def fingerprints(self) -> Sequence[str]:
        """The fingerprints this request answers: its rows' in a pack, else its own."""
        return self.pack.fingerprints if self.pack is not None else (self.fingerprint,)


class Carried(Protocol):
    """A pack's rows and how its answer comes apart (`render.packs.Pack`), as the pool sees them."""

    @property
    def fingerprints(self) -> Sequence[str]: ...

    def answers(self, completion: Completion, *, attempts: int,
                latency_s: float | None) -> tuple[list[Answer], list[Request]]:
        """Each row's answer that came back whole, and the requests that carry the other rows again."""
        ...

    def split(self) -> list[Request]:
        """The pack's rows in smaller packs (or alone): for a pack the server refused as a whole."""
        ...

    def failures(self, error: str, *, permanent: bool, attempts: int,
                 request_id: str | None) -> list[Answer]:
        """Each row's failure, when the pack's request failed for good."""
        ...

    def shelved(self) -> list[Answer]:
        """What its rows keep of earlier packs' cost, when the pack is dropped unsent (a stop)."""
        ...


@record
class RateInfo:
    """What one response's headers said about the account's limits (None: header absent).

    Groq's `-requests` headers count requests per DAY; its `-tokens` headers count tokens per MINUTE.
    """

    requests_limit_day: int | None = None
    requests_remaining_day: int | None = None
    requests_reset_s: float | None = None
    tokens_limit_minute: int | None = None
    tokens_remaining_minute: int | None = None
    tokens_reset_s: float | None = None


@record
class Completion:
    """A successful chat completion, as parsed by the client."""

    text: str | None
    finish_reason: str | None
    model: str | None
    request_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    queue_time: float | None = None
    total_time: float | None = None
    reasoning: str | None = None
    rate: RateInfo = field(default_factory=RateInfo)


@record
class Answer:
    """The final outcome for one fingerprint: a completion or an error. What the store keeps."""

    fingerprint: str
    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    model: str | None = None
    latency_s: float | None = None
    queue_time: float | None = None
    total_time: float | None = None
    reasoning: str | None = None  # the model's reasoning, when the request asked for it
    attempts: int = 0
    error: str | None = None
    permanent: bool = False  # for errors: True when re-sending the same request cannot help
    rows_in_request: int | None = None  # how many rows shared the request that answered (a pack: > 1)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_completion(cls, fp: str, c: Completion, *, attempts: int, latency_s: float | None) -> Answer:
        return cls(
            fingerprint=fp,
            text=c.text,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            total_tokens=c.total_tokens,
            reasoning_tokens=c.reasoning_tokens,
            cached_tokens=c.cached_tokens,
            finish_reason=c.finish_reason,
            request_id=c.request_id,
            model=c.model,
            latency_s=latency_s,
            queue_time=c.queue_time,
            total_time=c.total_time,
            reasoning=c.reasoning,
            attempts=attempts,
            rows_in_request=1,
        )

    @classmethod
    def failure(cls, fp: str, error: str, *, permanent: bool, attempts: int,
                request_id: str | None = None) -> Answer:
        return cls(fingerprint=fp, error=error, permanent=permanent, attempts=attempts,
                   request_id=request_id)
