"""A pack's usage, shared out to its rows so that the rows' columns add up to what the server counted.

`shares` splits a whole count by weights with the largest-remainder rule: every share is a whole
token, the shares sum to the count exactly, and equal weights get shares that differ by one at most
(the earlier rows take the extra ones). `Spent` is what one row has been charged so far, across the
packs it was carried in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from batch.records import Answer


def shares(total: int | None, weights: Sequence[float]) -> list[int | None]:
    """`total` split in proportion to `weights` (all zero: equally); None when the server said nothing."""
    if total is None:
        return [None] * len(weights)
    n = len(weights)
    whole = sum(weights)
    exact = [total * w / whole for w in weights] if whole > 0 else [total / n] * n
    got = [int(x) for x in exact]
    # The tokens the floors left over go to the largest remainders, ties to the earlier row.
    for i in sorted(range(n), key=lambda i: (got[i] - exact[i], i))[: total - sum(got)]:
        got[i] += 1
    return list(got)


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens charged to one row (None: no request carrying it said)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    NONE: ClassVar[Spent]  # nothing charged yet

    @classmethod
    def of(cls, answer: Answer) -> Spent:
        """What an answer's usage columns say."""
        return cls(answer.input_tokens, answer.output_tokens, answer.cached_tokens, answer.reasoning_tokens)

    def __add__(self, other: Spent) -> Spent:
        return Spent(*(_plus(a, b) for a, b in zip(self._counts(), other._counts(), strict=True)))

    def __sub__(self, other: Spent) -> Spent:
        """Less `other` (what of it is known); unknown stays unknown."""
        pairs = zip(self._counts(), other._counts(), strict=True)
        return Spent(*(None if a is None else a - (b or 0) for a, b in pairs))

    def _counts(self) -> tuple[int | None, ...]:
        return self.input_tokens, self.output_tokens, self.cached_tokens, self.reasoning_tokens

    def charged(self, answer: Answer) -> Answer:
        """The answer with these as its usage columns (total_tokens: input and output, when both are
        known)."""
        total = None if self.input_tokens is None or self.output_tokens is None \
            else self.input_tokens + self.output_tokens
        return replace(answer, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                       total_tokens=total, cached_tokens=self.cached_tokens,
                       reasoning_tokens=self.reasoning_tokens)


Spent.NONE = Spent()


def _plus(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b
