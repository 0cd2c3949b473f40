"""The simulator's rate limits: one budget per model, with Groq's 413s, 429s and ``x-ratelimit-*`` headers.

This module owns how the Groq simulator meters requests: a model's RPM and TPM token buckets (which
may go into debt, as Groq's do), its RPD and TPD counters for the current simulated day, the order in
which Groq checks them, the 413 for a request larger than the TPM limit and the 429 bodies with
``retry-after``, the charge of what an answer really used, and the ``x-ratelimit-*`` headers (whose
``-requests`` are per day and ``-tokens`` per minute, as on Groq). Durations are written in Go's
format (:func:`go_duration`), as in Groq's headers and messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import SimConfig
from .schema import HttpError

ORG = "org_sim"
UPGRADE = "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"


def go_duration(seconds: float) -> str:
    """Go's time.Duration format, as in Groq's headers and messages: 860ms, 7.66s, 7m12.5s, 1h2m3s."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{hours}h{minutes}m{secs}" if hours else f"{minutes}m{secs}" if minutes else secs


@dataclass
class _Bucket:
    """A token bucket that may go into debt, refilled at limit/60 per second.

    Like Groq, it admits a request once it holds min(requested, capacity) and then charges all of
    it: a request bigger than the burst still passes when the bucket is full, and the debt delays
    whoever comes next. Limit and burst are re-read at each refill, as the config may change.
    """

    level: float
    stamp: float
    limit: int = 1
    burst_s: float = 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.limit * self.burst_s / 60.0)

    def refill(self, now: float, limit: int, burst_s: float) -> None:
        self.limit, self.burst_s = limit, burst_s
        self.level = min(self.capacity, self.level + (now - self.stamp) * limit / 60.0)
        self.stamp = now

    def wait(self, amount: int) -> float:
        """Seconds until `amount` is admitted; 0 if it is admitted now."""
        return max(0.0, (min(amount, self.capacity) - self.level) * 60.0 / self.limit)

    def used(self) -> int:
        return max(0, self.limit - math.floor(self.level))


class Budget:
    """One model's limits: RPM and TPM buckets, RPD and TPD counters for the current day."""

    def __init__(self, now: float) -> None:
        # Start full: the first refill clamps the infinite level to the capacity.
        self.rpm, self.tpm = _Bucket(math.inf, now), _Bucket(math.inf, now)
        self.day, self.day_left, self.requests, self.tokens = -1, 0.0, 0, 0

    def sync(self, cfg: SimConfig, now: float, epoch: float) -> None:
        self.rpm.refill(now, cfg.rpm, cfg.burst_s)
        self.tpm.refill(now, cfg.tpm, cfg.burst_s)
        day = int((now - epoch) // cfg.day_s)
        if day != self.day:  # a new simulated day: the daily budgets start over
            self.day, self.requests, self.tokens = day, 0, 0
        self.day_left = epoch + (day + 1) * cfg.day_s - now

    def admit(self, cfg: SimConfig, model: str, requested: int) -> None:
        """Charge one request of `requested` tokens, or raise the 413/429 Groq would send."""
        head = f"for model `{model}` in organization `{ORG}` service tier `on_demand` on"
        if requested > cfg.tpm:  # no wait can help: 413, not 429
            raise HttpError(413, f"Request too large {head} tokens per minute (TPM): Limit {cfg.tpm}, "
                           f"Requested {requested}, please reduce your message size and try again. "
                           f"{UPGRADE}", type_="tokens", code="rate_limit_exceeded")
        day_over = self.day_left if self.requests + 1 > cfg.rpd else 0.0
        tokens_over = self.day_left if self.tokens + requested > cfg.tpd else 0.0
        # Groq's order; a refused request consumes nothing.
        for what, type_, limit, used, asked, wait in (
            ("requests per day (RPD)", "requests", cfg.rpd, self.requests, 1, day_over),
            ("tokens per day (TPD)", "tokens", cfg.tpd, self.tokens, requested, tokens_over),
            ("requests per minute (RPM)", "requests", cfg.rpm, self.rpm.used(), 1, self.rpm.wait(1)),
            ("tokens per minute (TPM)", "tokens", cfg.tpm, self.tpm.used(), requested,
             self.tpm.wait(requested)),
        ):
            if wait > 0:
                retry = {"retry-after": str(max(1, math.ceil(wait)))}
                raise HttpError(429, f"Rate limit reached {head} {what}: Limit {limit}, Used {used}, "
                               f"Requested {asked}. Please try again in {go_duration(wait)}. {UPGRADE}",
                               type_=type_, code="rate_limit_exceeded", headers=retry)
        self.rpm.level -= 1
        self.requests += 1
        self.charge(requested)

    def charge(self, tokens: int) -> None:
        """Take tokens from the minute and day budgets (negative: give back what was not used)."""
        self.tpm.level -= tokens
        self.tokens += tokens

    def headers(self, cfg: SimConfig) -> dict[str, str]:
        # The trap, as on Groq: the -requests headers are per DAY, the -tokens ones per minute.
        return {
            "x-ratelimit-limit-requests": str(cfg.rpd),
            "x-ratelimit-remaining-requests": str(max(0, cfg.rpd - self.requests)),
            "x-ratelimit-reset-requests": go_duration(self.day_left),
            "x-ratelimit-limit-tokens": str(cfg.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.tpm.level))),
            "x-ratelimit-reset-tokens": go_duration((self.tpm.capacity - self.tpm.level) * 60.0 / cfg.tpm),
        }
