"""A worker's pacer in a cluster run: the engine's pool paces through it (`limits.Pacing`) as through a
local `Pacer`, but the rate comes from the cluster's one `SharedRate`, leased in slices of about
`slice_s` seconds of the rate.

    pool.acquire ─► slice held here? ─ yes ─► send
                          │ no
                          ▼
                 one lease call at a time ─► SharedRate (in the scheduler): grant | wait | cool down | halt

What the pool reports (usage, Groq's headers, a 429's limit and cool-down) is passed on with the next
lease; a 429 is passed on at once, and this worker drops the requests it holds, so a cool-down holds
every worker within about a slice. Tokens a request did not use stay here for the next request; more
than two slices' worth go back to the rate. When the rate says halt (a daily quota spent, a fatal
error elsewhere, the client interrupted), `on_halt` is called — it interrupts the run — and no more
requests are admitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from batch.records import RateInfo

log = logging.getLogger("batch.cluster")

Call = Callable[..., Awaitable[dict[str, Any]]]  # Call(**lease arguments) -> the rate's reply


class LeasedPacer:
    def __init__(self, call: Call, *, rpm: float, tpm: float, on_halt: Callable[[str], None],
                 slice_s: float = 1.0, burst_s: float = 2.0) -> None:
        self._call, self._on_halt = call, on_halt
        self._slice_s, self._burst_s = slice_s, burst_s
        self.rpm, self.tpm = rpm, tpm
        self._requests = 0  # requests this worker may still send
        self._tokens = 0.0  # tokens it holds (negative: used beyond what it was granted)
        self._resume_at = 0.0  # loop time
        self._lock = asyncio.Lock()
        self._report: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.halted: str | None = None
        self.message: str | None = None
        self.leases = 0

    @property
    def requests_per_minute(self) -> float:
        return self.rpm

    @property
    def tokens_per_minute(self) -> float:
        return self.tpm

    def fits(self, tokens: int) -> bool:
        return tokens <= self.tpm

    async def acquire(self, tokens: int) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            while (wait := self._resume_at - loop.time()) > 0:
                await asyncio.sleep(wait)
            if self.halted is not None:
                await asyncio.Event().wait()  # never admitted; the interrupted pool cancels this wait
            if tokens > self.tpm:
                return False
            if self._has(tokens):
                self._requests -= 1
                self._tokens -= tokens
                return True
            async with self._lock:
                if not self._has(tokens) and self.halted is None:
                    await self._lease(tokens)

    def _has(self, tokens: int) -> bool:
        return self._requests >= 1 and self._tokens >= min(tokens, max(1.0, self.tpm / 60 * self._burst_s))

    async def _lease(self, tokens: int) -> None:
        cap = max(1.0, self.tpm / 60 * self._burst_s)
        need_t = max(0.0, min(tokens, cap) - self._tokens) if self._tokens < min(tokens, cap) else 0.0
        want_r = max(1.0, self.rpm / 60 * self._slice_s) if self._requests < 1 else 0.0
        want_t = need_t + self.tpm / 60 * self._slice_s if need_t > 0 else 0.0
        reply = await self._ask(want_requests=want_r, want_tokens=want_t, need_tokens=need_t)
        if not reply["requests"] and not reply["tokens"] and self.halted is None:
            await asyncio.sleep(min(max(reply["wait"], 0.01), 1.0))

    async def _ask(self, **ask: float) -> dict[str, Any]:
        surplus = self._tokens - 2 * self.tpm / 60 * self._slice_s
        give = max(0.0, surplus)
        self._tokens -= give
        report, self._report = self._report, {}
        reply = await self._call(give_tokens=give, report=report, **ask)
        self.leases += 1
        self._requests += int(reply["requests"])
        self._tokens += float(reply["tokens"])
        self.rpm, self.tpm = float(reply["rpm"]) or self.rpm, float(reply["tpm"]) or self.tpm
        if reply["resume_in"] > 0:
            self._cool(reply["resume_in"])
        if reply["halt"] is not None and self.halted is None:
            self.halted, self.message = reply["halt"], reply["message"]
            log.info("cluster limiter: stop (%s)", self.halted)
            self._on_halt(self.halted)
        return reply

    def _cool(self, seconds: float) -> None:
        until = asyncio.get_running_loop().time() + seconds
        if until > self._resume_at:
            self._resume_at = until
            self._requests = 0  # what is held would go out in a burst as the cool-down ends

    def _push(self) -> None:
        """Send the report now (a 429 is news for every worker), without waiting for the reply."""
        task = asyncio.get_running_loop().create_task(self._send_report())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_report(self) -> None:
        try:
            await self._ask()
        except Exception as exc:  # the next lease carries the news again; never break the pool
            log.warning("cluster limiter: report not delivered: %s", exc)

    def cool_down(self, seconds: float) -> None:
        self._cool(seconds)
        self._report["cool_down"] = max(seconds, float(self._report.get("cool_down") or 0))
        self._push()

    def settle(self, reserved: int, used: int | None) -> None:
        if used is not None:
            self._tokens += reserved - used
            self._report["largest"] = max(used, int(self._report.get("largest") or 0))

    def observe(self, rate: RateInfo) -> None:
        if rate.tokens_limit_minute:
            self._report["tpm_limit"] = rate.tokens_limit_minute
        if rate.tokens_remaining_minute is not None:
            self._report["tokens_remaining"] = rate.tokens_remaining_minute

    def learn_limit(self, kind: str | None, limit: float | None) -> None:
        if kind in ("rpd", "tpd"):  # a daily quota is spent: every worker stops, now
            self._report["quota"] = kind
            self._push()
        elif kind in ("rpm", "tpm") and limit:
            self._report.setdefault("learned", []).append((kind, limit))
            self._push()

    async def close(self) -> None:
        """Give back what is held (the rate is the cluster's) and deliver the last report."""
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        requests, self._requests = self._requests, 0
        give, self._tokens = max(0.0, self._tokens), 0.0
        report, self._report = self._report, {}
        try:
            await self._call(give_tokens=give, give_requests=requests, report=report)
        except Exception as exc:
            log.warning("cluster limiter: could not give back the unspent rate: %s", exc)
