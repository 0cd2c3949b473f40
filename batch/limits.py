"""Pacing: requests per minute, tokens per minute, and one shared cool-down after a 429.

Two aiolimiter leaky buckets do the pacing. aiolimiter's bucket admits its whole `max_rate` at once,
so a bucket sized to a minute (`AsyncLimiter(30, 60)`) would fire 30 requests in the first instant
and then stall. Ours hold only `burst_s` seconds of the budget: at 30 requests/min and a 2 s burst the
bucket holds one request and drips one every 2 s — the steady rate, from the first second.

aiolimiter refuses `acquire(n)` above its capacity, and a token bucket that holds two seconds of an
8,000 tokens/min budget (266 tokens) is smaller than many requests; `acquire_tokens` therefore takes
a large request in capacity-sized pieces, which paces it exactly and never raises.

Every wait goes through the running loop's clock, so tests drive it with a virtual-time loop.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter


class Pacer:
    """Shared by all workers of one run."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float, *, burst_s: float = 2.0) -> None:
        if requests_per_minute <= 0 or tokens_per_minute <= 0:
            raise ValueError("limits must be positive")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = _bucket(requests_per_minute / 60.0, burst_s)
        self._tokens = _bucket(tokens_per_minute / 60.0, burst_s)
        self._resume_at = 0.0  # loop time before which nobody sends (shared 429 cool-down)
        self.cooldowns = 0

    def fits(self, tokens: int) -> bool:
        """Whether a request of `tokens` can ever be admitted (Groq answers 413 otherwise)."""
        return tokens <= self.tokens_per_minute

    def cool_down(self, seconds: float) -> None:
        """Hold every worker for `seconds` from now (extends, never shortens, a running cool-down)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if until > self._resume_at:
            self._resume_at = until
            self.cooldowns += 1

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` estimated tokens may be sent."""
        loop = asyncio.get_running_loop()
        while (wait := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(wait)
        await self._requests.acquire(1)
        remaining = float(tokens)
        cap = self._tokens.max_rate
        while remaining > 0:
            piece = min(remaining, cap)
            await self._tokens.acquire(piece)
            remaining -= piece
        # A cool-down may have started while we waited in the buckets: honour it too.
        while (wait := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(wait)


def _bucket(rate_per_s: float, burst_s: float) -> AsyncLimiter:
    # Capacity at least 1 so acquire(1) is legal even at very low rates.
    capacity = max(1.0, rate_per_s * burst_s)
    return AsyncLimiter(capacity, capacity / rate_per_s)
