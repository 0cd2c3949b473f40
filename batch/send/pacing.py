"""Pacing: requests per minute, tokens per minute, one shared cool-down after a 429, and what the
server says about its limits.

Requests are paced by an aiolimiter leaky bucket. aiolimiter's bucket admits its whole `max_rate` at
once, so a bucket sized to a minute (`AsyncLimiter(30, 60)`) would fire 30 requests in the first
instant and then stall; ours holds only `burst_s` seconds of the budget: at 30 requests/min and a
2 s burst it holds one request and drips one every 2 s — the steady rate, from the first second.

Tokens are paced by `TokenBucket`, which aiolimiter cannot be: a request reserves its *estimate*
(prompt estimate + completion budget) before it is sent, and when Groq reports the real usage the
difference is handed back (`settle`), so generous estimates do not waste the budget. The bucket may
go into debt: a request larger than the burst is admitted once the bucket is full, and the debt
then delays the next ones, which keeps the average exact without ever refusing a legal request.
The very first request goes at once on the same terms (its debt delays the second): a run starts
without waiting, and no minute, the first included, sees more than the limit.

Learning: a limit the job does not state starts from the model's base tier and follows the server:
`x-ratelimit-limit-tokens` is the tokens-per-minute limit, and a 429 body's "Limit N" names the
requests- or tokens-per-minute limit it hit. No header states requests per minute, so an unstated
one is raised step by step while it is what holds the run back, until a 429 pins it. Limits the job
states are never raised by the server, only lowered.

Every wait goes through the running loop's clock, so tests drive it in virtual time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiolimiter import AsyncLimiter

from batch.records import RateInfo
from batch.send.tokenbucket import TokenBucket

log = logging.getLogger("batch.limits")

PROBE_S = 5.0  # seconds between two upward steps of an unstated requests-per-minute limit
PROBE_STEP = 1.5
RPM_MARGIN = 0.97  # pace at this share of a requests-per-minute limit learned from a 429


class Pacing(Protocol):
    """What the pool asks of a pacer. `Pacer` paces one process; a cluster run plugs in a pacer that
    leases its budget from one limiter shared by every machine (`batch.cluster`)."""

    @property
    def requests_per_minute(self) -> float: ...

    @property
    def tokens_per_minute(self) -> float: ...

    def fits(self, tokens: int) -> bool: ...

    async def acquire(self, tokens: int) -> bool: ...

    def cool_down(self, seconds: float) -> None: ...

    def settle(self, reserved: int, used: int | None) -> None: ...

    def observe(self, rate: RateInfo) -> None: ...

    def learn_limit(self, kind: str | None, limit: float | None) -> None: ...


class Pacer:
    """Shared by all workers of one run."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float, *, burst_s: float = 2.0,
                 learn_requests: bool = False, learn_tokens: bool = False) -> None:
        if requests_per_minute <= 0 or tokens_per_minute <= 0:
            raise ValueError("limits must be positive")
        self._burst_s = burst_s
        # learn_*: the job did not state that limit, so the server's figure replaces it, up or down;
        # otherwise the server may only lower it.
        self._learn_requests, self._learn_tokens = learn_requests, learn_tokens
        self._ceiling_rpm = requests_per_minute
        self._ceiling_tpm = tokens_per_minute
        self.requests_per_minute = requests_per_minute
        self._requests = _request_bucket(requests_per_minute, burst_s)
        self._primed = False
        self._tokens = TokenBucket(tokens_per_minute, burst_s)
        self._probing = learn_requests
        self._largest = 0  # the largest usage the server has accepted for one request
        self._last_probe: float | None = None
        self._resume_at = 0.0  # loop time before which nobody sends (shared 429 cool-down)
        self.cooldowns = 0
        self._reserved = 0  # tokens reserved by requests the server has not answered yet
        self._told_remaining = False  # the server has said how many tokens of the minute are left

    @property
    def tokens_per_minute(self) -> float:
        return self._tokens.per_minute

    def fits(self, tokens: int) -> bool:
        """Whether a request of `tokens` can ever be admitted (Groq answers 413 otherwise)."""
        return tokens <= self.tokens_per_minute

    def cool_down(self, seconds: float) -> None:
        """Hold every worker for `seconds` from now (extends, never shortens, a running cool-down)."""
        until = asyncio.get_running_loop().time() + seconds
        if until > self._resume_at:
            self._resume_at = until
            self.cooldowns += 1

    async def _cooled(self) -> None:
        loop = asyncio.get_running_loop()
        while (wait := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(wait)

    async def acquire(self, tokens: int) -> bool:
        """Wait until one request of `tokens` estimated tokens may be sent, and reserve them; False if
        it no longer fits at all (the server lowered the limit while it waited)."""
        if self._resume_at:  # (a coroutine call per request saved while no cool-down ever began)
            await self._cooled()
        if self._probing and not self._requests.has_capacity(1):
            self._probe()
        if not self._primed:
            # aiolimiter's bucket starts empty, i.e. with its whole burst available at once; fill it
            # to one below capacity so the first minute runs at the steady rate like every other.
            self._primed = True
            await self._requests.acquire(self._requests.max_rate - 1)
        await self._requests.acquire(1)
        if not self._tokens.try_take(tokens) and not await self._tokens.take(tokens):
            return False
        self._reserved += tokens
        if self._resume_at:  # a cool-down may have started while we waited in the buckets
            await self._cooled()
        return True

    def _probe(self) -> None:
        # Groq's headers never state the requests-per-minute limit, and only a 429 names it. When the
        # job did not state it and requests are what holds us back, raise the pace a step at a time
        # (at most every `PROBE_S` seconds); the first requests-per-minute 429 pins the real figure.
        now = asyncio.get_running_loop().time()
        if self._last_probe is None:
            self._last_probe = now
        elif now - self._last_probe >= PROBE_S:
            self._last_probe = now
            self._set_rpm(self.requests_per_minute * PROBE_STEP, why="probing upward")

    def settle(self, reserved: int, used: int | None) -> None:
        """Reconcile a reservation with the usage the server reported (None: keep the reservation)."""
        self._reserved = max(0, self._reserved - reserved)
        if used is not None:
            self._tokens.give_back(reserved - used)
            self._largest = max(self._largest, used)

    def observe(self, rate: RateInfo) -> None:
        """Follow what a response's headers report: the per-minute token limit, and how many tokens
        of the minute are left — fewer than this run's bucket holds means someone else (another job
        on the same organization) is spending the same budget, so this run slows down to match."""
        if rate.tokens_limit_minute:
            self._set_tpm(float(rate.tokens_limit_minute))
        if rate.tokens_remaining_minute is not None:
            if not self._told_remaining:
                # The bucket starts empty, as if the minute had been spent; the first count the
                # server gives says how much of it is really free: take that (less what is still in
                # flight, which the server has not counted yet), up to the burst, so the run need not
                # wait a burst's worth of time to find out what it could have sent at once.
                self._told_remaining = True
                self._tokens.top_up(float(rate.tokens_remaining_minute) - self._reserved)
            self._tokens.cap(float(rate.tokens_remaining_minute))

    def learn_limit(self, kind: str | None, limit: float | None) -> None:
        """A 429 named the limit it hit ("rpm"/"tpm") and its value."""
        if not limit or limit <= 0:
            return
        if kind == "tpm":
            if limit < self._largest:  # below a request the server just accepted: not a real TPM limit
                return
            self._set_tpm(limit)
        elif kind == "rpm":
            # Found by overshooting it: the server's bucket is empty now, and pacing at exactly its
            # refill rate would collect a 429 at every jitter. Stay a little below.
            self._probing = False
            limit *= RPM_MARGIN
            self._set_rpm(limit if self._learn_requests else min(limit, self._ceiling_rpm),
                          why="just below the server's limit")

    def _set_rpm(self, rpm: float, *, why: str) -> None:
        if rpm != self.requests_per_minute:
            log.info("requests per minute: now %g (%s)", rpm, why)
            self.requests_per_minute = rpm
            self._requests = _request_bucket(rpm, self._burst_s)
            self._primed = False

    def _set_tpm(self, limit: float) -> None:
        tpm = limit if self._learn_tokens else min(limit, self._ceiling_tpm)
        if tpm != self._tokens.per_minute:
            log.info("tokens per minute: now %g (the server's limit)", tpm)
            self._tokens.set_rate(tpm)


def _request_bucket(per_minute: float, burst_s: float) -> AsyncLimiter:
    rate_per_s = per_minute / 60.0
    capacity = max(1.0, rate_per_s * burst_s)  # at least 1, so acquire(1) is legal at low rates
    return AsyncLimiter(capacity, capacity / rate_per_s)


def too_large(tokens: int, tokens_per_minute: float) -> str:
    """Why a request that could never fit the tokens-per-minute limit is not sent."""
    return (f"request too large: about {tokens} tokens (prompt + max-new-tokens) but the limit is "
            f"{tokens_per_minute:g} tokens per minute; shorten the prompt or lower max-new-tokens")
