"""The token bucket that paces tokens per minute: reservations of estimates, handed back when the
server reports real usage, with debt allowed (see `limits` for why); every wait on the loop's clock."""

from __future__ import annotations

import asyncio


class TokenBucket:
    """A continuous token bucket on the loop's clock, holding `burst_s` seconds of the rate."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self._burst_s = burst_s
        self.set_rate(per_minute)
        # Start as if it had been sending at full rate: the burst builds up only in idle time, so
        # no window of a minute, the first included, sees more than the limit. The first request
        # borrows its tokens (the level goes below zero), so it need not wait for them.
        self.level = 0.0
        self._fresh = True
        self._stamp: float | None = None
        self._turn = asyncio.Lock()  # waiters are served in arrival order: a big request is not starved
        self._in_line = 0  # requests inside `take`: while any waits, nobody passes it (`try_take`)

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * self._burst_s)

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self, amount: float) -> bool:
        """`take` when it would not wait: reserve `amount` now if nobody is in line and the bucket
        holds it; else False, reserving nothing (then `take`). Against a fast server nearly every
        request passes here, without the lock and the coroutine of `take`."""
        if self._in_line or amount > self.per_minute:
            return False
        return self._reserve(amount, asyncio.get_running_loop().time())

    async def take(self, amount: float) -> bool:
        """Wait for `amount` and reserve it; False, reserving nothing, once the rate drops below
        `amount` a minute (the limit was lowered while this waited: it can never be admitted)."""
        loop = asyncio.get_running_loop()
        self._in_line += 1
        try:
            async with self._turn:
                while True:
                    if amount > self.per_minute:
                        return False
                    if self._reserve(amount, loop.time()):
                        return True
                    need = min(amount, self.capacity)
                    # Short naps, so that a rate lowered meanwhile is seen within a second.
                    await asyncio.sleep(min(1.0, (need - self.level) / self.rate))
        finally:
            self._in_line -= 1

    def _reserve(self, amount: float, now: float) -> bool:
        self._refill(now)
        need = 0.0 if self._fresh else min(amount, self.capacity)
        if self.level < need:
            return False
        self.level -= amount
        self._fresh = False
        return True

    def cap(self, available: float) -> None:
        """Hold no more than `available` tokens (the server's count of what is left)."""
        self._refill(asyncio.get_running_loop().time())
        self.level = min(self.level, available)

    def top_up(self, available: float) -> None:
        """Hold up to `available` tokens (no more than the burst): the server says they are free."""
        self._refill(asyncio.get_running_loop().time())
        self.level = max(self.level, min(self.capacity, available))

    def give_back(self, amount: float) -> None:
        """Return tokens reserved but not used (negative: charge tokens used beyond the reservation)."""
        self._refill(asyncio.get_running_loop().time())
        self.level = min(self.capacity, self.level + amount)
