"""The run's figures over time, kept small: per-second counters, value histograms, the first failures.

The run report plots these; they are counted as events happen and saved with the run, so their size
must not follow the number of rows:

- `Timeline` counts events (requests sent, answers, 429s, retries, tokens, ...) in buckets of
  `width` seconds from the start of the run, with the limits in force at the time. One event is a
  clock read, a comparison and a list bump (a dict look-up when a new second starts). When there
  would be more than `max_buckets` buckets the width doubles and neighbours merge, so a run of any
  length keeps at most `max_buckets` (1,200: tens of kilobytes even for a run of days).
- `Histogram` counts values (latency, queue time) in log-spaced buckets, a fixed few hundred of them.
- `Failures` keeps the first few failed rows with their errors, and a count of failures by kind.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

# Counters of a bucket, in this order, then the limits in force when the bucket's last request left.
COUNTS = ("requests", "answered", "failed", "input_tokens", "output_tokens", "rate_limited", "retries",
          "errors")
LIMITS = ("rpm", "tpm")
COLUMNS = COUNTS + LIMITS
(REQUESTS, ANSWERED, FAILED, INPUT_TOKENS, OUTPUT_TOKENS, RATE_LIMITED, RETRIES, ERRORS,
 RPM, TPM) = range(len(COLUMNS))


class Timeline:
    """Counters in buckets of `width` seconds from the start; coarsened to stay under `max_buckets`."""

    def __init__(self, max_buckets: int = 1200, clock: Callable[[], float] = time.monotonic) -> None:
        self.started = time.time()  # wall clock, for the report's axis labels
        self._clock, self._t0 = clock, clock()
        self._max = max(2, max_buckets)
        self.width = 1
        self._buckets: dict[int, list[float]] = {}
        self._current: list[float] = []
        self._until = -math.inf  # clock time at which `_current` stops being the current bucket

    def bucket(self) -> list[float]:
        """The counters of the current second (or coarser bucket), to bump by column index."""
        now = self._clock()
        if now < self._until:  # most events fall in the bucket of the one before
            return self._current
        i = int(now - self._t0) // self.width
        b = self._buckets.get(i)
        if b is None:
            while len(self._buckets) >= self._max:
                self._coarsen()
                i //= 2
            b = self._buckets.setdefault(i, [0] * len(COLUMNS))
        self._current, self._until = b, self._t0 + (i + 1) * self.width
        return b

    def add(self, column: int, n: float = 1) -> None:
        self.bucket()[column] += n

    def sent(self, rpm: float, tpm: float) -> None:
        """A request left, paced at these limits."""
        b = self.bucket()
        b[REQUESTS] += 1
        b[RPM], b[TPM] = rpm, tpm

    def _coarsen(self) -> None:
        merged: dict[int, list[float]] = {}
        for i in sorted(self._buckets):
            src = self._buckets[i]
            dst = merged.setdefault(i // 2, [0] * len(COLUMNS))
            for c in range(len(COUNTS)):
                dst[c] += src[c]
            if src[RPM]:  # the later bucket's limits win: they were in force at the end
                dst[RPM], dst[TPM] = src[RPM], src[TPM]
        self._buckets, self.width, self._until = merged, self.width * 2, -math.inf

    def to_dict(self) -> dict[str, Any]:
        """Column-wise, `second` being each bucket's start from the start of the run."""
        keys = sorted(self._buckets)
        out: dict[str, Any] = {"started": self.started, "width": self.width,
                               "second": [k * self.width for k in keys]}
        for c, name in enumerate(COLUMNS):
            out[name] = [_num(self._buckets[k][c]) for k in keys]
        return out


class Histogram:
    """Counts of values in buckets growing by `ratio` from `lo`; quantiles are accurate to ~ratio."""

    def __init__(self, lo: float = 1e-3, hi: float = 3600.0, ratio: float = 1.02) -> None:
        self.lo, self.ratio = lo, ratio
        n = math.ceil(math.log(hi / lo) / math.log(ratio)) + 1
        self._bounds = [lo * ratio**i for i in range(n)]
        self._counts = [0] * (n + 1)
        self.count = 0

    def add(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank, seen = q * (self.count - 1), 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen > rank:
                return self._bounds[min(i, len(self._bounds) - 1)]
        return self._bounds[-1]

    def to_dict(self) -> dict[str, Any]:
        """The non-empty buckets, by upper bound: {"upper": [...], "count": [...]} (sparse)."""
        nz = [i for i, c in enumerate(self._counts) if c]
        return {"upper": [round(self._bounds[min(i, len(self._bounds) - 1)], 6) for i in nz],
                "count": [self._counts[i] for i in nz], "ratio": self.ratio}


class Failures:
    """The first `keep` failed rows (row number, error) and the number of failures of each kind."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.first: list[tuple[int | None, str]] = []
        self.kinds: Counter[str] = Counter()

    def add(self, row: int | None, error: str, *, kind: str | None = None, permanent: bool = True) -> None:
        """A failed row (0-based; None when not known); `kind` names it when the caller knows better."""
        self.kinds[kind or error_kind(error, permanent=permanent)] += 1
        if len(self.first) < self.keep:  # an error body can be long: its start says what it is
            self.first.append((row, error if len(error) <= 600 else error[:600] + " [...]"))

    def to_dict(self) -> dict[str, Any]:
        return {"first": [{"row": r, "error": e} for r, e in self.first], "kinds": dict(self.kinds)}


_STATUS = re.compile(r"(\d{3})\b")


def error_kind(error: str, *, permanent: bool = True) -> str:
    """A short name for the kind of a row's failure, to group the report's counts by.

    The error texts are the ones this program writes (an HTTP status first when there was one), so
    this only groups them for display; nothing decides anything by it.
    """
    if m := _STATUS.match(error):
        return f"HTTP {m.group(1)}"
    for prefix, kind in (("request too large", "too large for the limit"),
                         ("the model returned no text", "no text (budget spent)"),
                         ("the Batch API refused", "refused by the Batch API"),
                         ("no answer was recorded", "no answer")):
        if error.startswith(prefix):
            return kind
    return "other" if permanent else "connection or timeout"


def _num(v: float) -> float:
    return int(v) if float(v).is_integer() else round(v, 3)
