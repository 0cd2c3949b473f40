"""What each error class means for a request: retry after a delay, give up on the row, or end the run.

    FatalApiError (401/403, model gone)     -> fatal: the run ends, no row is blamed
    RateLimited, daily (RPD/TPD)            -> quota: stop dispatching, resumable (exit 3)
    RateLimited (RPM/TPM)                   -> retry after the server's wait (+ a little jitter)
    ServerError, TransportError             -> retry with full-jitter exponential backoff
    BadRequest 422                          -> retry at most twice, then permanent
    BadRequest, RequestTooLarge             -> permanent: re-sending the same request cannot help

The pool asks it for every chat request, and the Batch API wing for every files and batches call:
one policy for every path.

Full jitter (delay drawn uniformly from 0 to the exponential ceiling) spreads retries of many
workers that failed together, instead of having them return in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from batch.errors import ApiError, BadRequest, FatalApiError, RateLimited, ServerError, TransportError


class Action(Enum):
    RETRY = "retry"
    GIVE_UP = "give_up"  # the row fails
    QUOTA = "quota"  # a daily quota is spent: stop the run, resumable
    FATAL = "fatal"  # the run ends


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    permanent: bool = False  # for GIVE_UP: True when a later run should not re-send it either


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_422_attempts: int = 3
    max_wait_s: float = 900.0  # a server's requested wait is honoured up to this

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))

    @staticmethod
    def transient(exc: ApiError) -> bool:
        """Whether the same request may succeed later: a rate limit, a 5xx or 498, a broken answer."""
        return isinstance(exc, RateLimited | ServerError | TransportError)

    def decide(self, exc: ApiError, attempt: int, rng: random.Random) -> Decision:
        """`attempt` is the number of attempts made so far, including the one that failed."""
        if isinstance(exc, FatalApiError):
            return Decision(Action.FATAL)
        if isinstance(exc, RateLimited) and exc.daily:
            return Decision(Action.QUOTA, delay_s=exc.retry_after or 0.0)
        exhausted = attempt >= self.max_attempts
        if isinstance(exc, RateLimited):
            if exhausted:
                return Decision(Action.GIVE_UP)
            wait = self.backoff(attempt, rng) if exc.retry_after is None else min(exc.retry_after,
                                                                                 self.max_wait_s)
            return Decision(Action.RETRY, delay_s=wait + rng.uniform(0.0, 0.25))
        if isinstance(exc, ServerError | TransportError):
            if exhausted:
                return Decision(Action.GIVE_UP)
            return Decision(Action.RETRY, delay_s=self.backoff(attempt, rng))
        if isinstance(exc, BadRequest) and exc.status == 422 and attempt < min(self.max_422_attempts,
                                                                               self.max_attempts):
            return Decision(Action.RETRY, delay_s=self.backoff(attempt, rng))
        return Decision(Action.GIVE_UP, permanent=True)
