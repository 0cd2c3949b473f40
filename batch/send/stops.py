"""What ends a run from inside the pool, besides a signal: a spent daily budget, and the breaker.

Groq's `x-ratelimit-*-requests` headers count the DAY's requests: when none is left, the run stops
cleanly (exit 3) rather than collect 429s; a budget that refills within minutes (OpenAI-style servers,
whose same headers count per minute) is waited out instead. The breaker: until a first success,
the same permanent rejection again and again (same status and code) means the job, not its rows,
is wrong for this server (say, max-new-tokens above the model's maximum); after one success, a
rejection is only that row's failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from batch.errors import ApiError, FatalApiError
from batch.send.pacing import Pacing

REJECTIONS_TO_STOP = 10  # identical permanent rejections, before any success, that end the run
SHORT_RESET_S = 900.0  # a spent request budget that resets sooner than this is waited out, not quit


@dataclass(frozen=True, slots=True)
class Quota:
    """A daily quota ran out: which one ("rpd", "tpd") and, when known, seconds until it resets."""

    limit: str
    reset_s: float | None


def daily_budget(remaining: int | None, reset_s: float | None, pacer: Pacing) -> Quota | None:
    """The quota spent, from one answer's headers; a short reset only cools the pacer down. The pool
    stops when the next request would need the budget; if none does, the run completes."""
    if remaining != 0:
        return None
    if reset_s is not None and reset_s <= SHORT_RESET_S:
        pacer.cool_down(reset_s)
        return None
    return Quota("rpd", reset_s)


class Breaker:
    """Counts identical permanent rejections while nothing has succeeded."""

    def __init__(self) -> None:
        self._successes = 0
        self._streak = 0  # identical permanent rejections in a row, while nothing succeeded
        self._kind: tuple[int | None, str | None] = (None, None)

    def succeeded(self, ok: bool) -> None:
        self._successes += ok

    def rejected(self, exc: ApiError) -> FatalApiError | None:
        """A permanent rejection; the error that ends the run, once the streak is long enough."""
        if self._successes:
            return None
        kind = (exc.status, exc.code)
        self._streak = self._streak + 1 if kind == self._kind else 1
        self._kind = kind
        if self._streak < REJECTIONS_TO_STOP:
            return None
        return FatalApiError(f"the first {self._streak} requests were all rejected the same way, so the "
                             f"job's settings are likely wrong for this server (last: {exc.describe()})",
                             status=exc.status, code=exc.code)
