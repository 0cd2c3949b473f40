"""The one rate of a cluster run: requests and tokens per minute, shared by every worker.

It lives in the Dask scheduler (`extension`), so it outlives any worker, and it is leased out in slices:
a worker asks for about a second of the rate, spends it locally, and comes back, so pacing costs a
round trip per slice rather than per request. Whatever a worker holds was taken from the buckets
when it was granted, so the cluster as a whole never sends faster than the limit; a worker that dies
takes its unspent slice with it, which only slows the run a little.

The buckets follow `batch.send.pacing`: they hold `burst_s` seconds of the rate and start empty (as if the
run had been sending at full rate), a request larger than the token burst is admitted when the bucket
is full and leaves it in debt, and an unstated requests-per-minute limit is raised step by step while
requests are what holds the run back, until a 429 names it. What one worker learns — the token limit
in Groq's headers, the tokens the server says are left, a limit named by a 429, a cool-down after a
429, a spent daily quota — changes the rate for all. Times are `clock()` seconds (monotonic).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batch.send.pacing import PROBE_S, PROBE_STEP, RPM_MARGIN


@dataclass
class _Bucket:
    per_minute: float
    burst_s: float
    level: float = 0.0
    stamp: float | None = None

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.burst_s)

    def refill(self, now: float) -> None:
        if self.stamp is not None:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` (at most the capacity) is in the bucket."""
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)


@dataclass
class SharedRate:
    rpm: float
    tpm: float
    learn_requests: bool = False  # the job did not state it: the server's figure replaces it
    learn_tokens: bool = False
    burst_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    resume_at: float = 0.0  # nobody sends before this (the shared cool-down after a 429)
    halt: str | None = None  # "quota", "fatal", "interrupted": every worker stops taking rows
    message: str | None = None
    largest: int = 0  # the largest usage the server accepted for one request
    cooldowns: int = 0
    _requests: _Bucket = field(init=False)
    _tokens: _Bucket = field(init=False)
    _ceiling_rpm: float = field(init=False)
    _ceiling_tpm: float = field(init=False)
    _probing: bool = field(init=False)
    _last_probe: float | None = None

    def __post_init__(self) -> None:
        self._requests, self._tokens = _Bucket(self.rpm, self.burst_s), _Bucket(self.tpm, self.burst_s)
        self._ceiling_rpm, self._ceiling_tpm = self.rpm, self.tpm
        self._probing = self.learn_requests

    def lease(self, *, want_requests: float = 0, want_tokens: float = 0, need_tokens: float = 0,
              give_tokens: float = 0, give_requests: int = 0,
              report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Grant what is there of what a worker asks for (whole requests; tokens once `need_tokens`,
        or the burst if smaller, is in the bucket), after taking in what it gives back and reports."""
        now = self.clock()
        self._requests.refill(now)
        self._tokens.refill(now)
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + give_tokens)
        self._requests.level = min(self._requests.capacity, self._requests.level + give_requests)
        if report:
            self._take_report(report, now)
        granted_r, granted_t, wait = 0, 0.0, 0.0
        cooling = self.resume_at - now
        if self.halt is None and cooling <= 0:
            if want_requests >= 1:
                if self._requests.level >= 1:
                    granted_r = int(min(want_requests, self._requests.level))
                    self._requests.level -= granted_r
                else:
                    wait = self._requests.wait_for(1)
                    self._probe(now)
            if want_tokens > 0:
                need = min(max(need_tokens, 1.0), self._tokens.capacity)
                if self._tokens.level >= need:
                    granted_t = max(need_tokens, min(want_tokens, self._tokens.level))
                    self._tokens.level -= granted_t
                else:
                    wait = max(wait, self._tokens.wait_for(need))
        return {"requests": granted_r, "tokens": granted_t, "wait": wait, "resume_in": max(0.0, cooling),
                "rpm": self._requests.per_minute, "tpm": self._tokens.per_minute, "halt": self.halt,
                "message": self.message}

    def stop(self, reason: str, message: str | None) -> None:
        if self.halt is None or reason in ("quota", "fatal"):  # the first real cause wins over a signal
            self.halt, self.message = reason, message

    def _take_report(self, report: dict[str, Any], now: float) -> None:
        self.largest = max(self.largest, int(report.get("largest") or 0))
        if report.get("cool_down"):
            until = now + float(report["cool_down"])
            if until > self.resume_at:
                self.resume_at, self.cooldowns = until, self.cooldowns + 1
        if report.get("tpm_limit"):
            self._set_tpm(float(report["tpm_limit"]))
        if report.get("tokens_remaining") is not None:
            self._tokens.level = min(self._tokens.level, float(report["tokens_remaining"]))
        for kind, limit in report.get("learned") or ():
            self._learn(kind, limit)
        if report.get("quota"):
            what = {"rpd": "requests per day", "tpd": "tokens per day"}.get(report["quota"], "daily")
            self.stop("quota", f"Groq's {what} quota for this model is used up. Answers so far are saved; "
                               "run the same command again after the reset to continue.")

    def _learn(self, kind: str | None, limit: float | None) -> None:
        if not limit or limit <= 0:
            return
        if kind == "tpm" and limit >= self.largest:  # below an accepted request: not a real TPM limit
            self._set_tpm(limit)
        elif kind == "rpm":  # found by overshooting: stay a little below, as one machine does
            self._probing = False
            limit *= RPM_MARGIN
            self._set_rpm(limit if self.learn_requests else min(limit, self._ceiling_rpm))

    def _probe(self, now: float) -> None:
        if not self._probing:
            return
        if self._last_probe is None:
            self._last_probe = now
        elif now - self._last_probe >= PROBE_S:
            self._last_probe = now
            self._set_rpm(self._requests.per_minute * PROBE_STEP)

    def _set_rpm(self, rpm: float) -> None:
        self._requests.per_minute = self.rpm = rpm
        self._requests.level = min(self._requests.level, self._requests.capacity)

    def _set_tpm(self, limit: float) -> None:
        tpm = limit if self.learn_tokens else min(limit, self._ceiling_tpm)
        self._tokens.per_minute = self.tpm = tpm
        self._tokens.level = min(self._tokens.level, self._tokens.capacity)
