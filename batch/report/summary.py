"""What a run did, for people (stderr) and schedulers (JSON beside the output).

`RunStats` only counts; `Summary` turns counts into the report. Progress display lives in
`progress`, prices in `catalog`. Latency percentiles come from a log-spaced histogram (buckets 2%
apart), and the counters over time from a coarsening `Timeline`, so memory stays constant however
many requests a run makes; the run report (`batch.report.html`) plots both.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from batch import fields
from batch.errors import ApiError, RateLimited, TransportError
from batch.job.catalog import cost_usd, usd
from batch.records import Answer
from batch.report import timeline as tl
from batch.report.timeline import Failures, Histogram, Timeline

__all__ = ["Histogram", "RunStats", "Summary"]


@dataclass
class RunStats:
    """Counters of one run, updated by the pool and the runner."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0  # HTTP attempts sent
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    answered: int = 0  # answers that arrived this run
    failed: int = 0  # requests that failed for good this run
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    queue: Histogram = field(default_factory=Histogram)  # Groq's own queue time, from usage
    timeline: Timeline = field(default_factory=Timeline)
    failures: Failures = field(default_factory=Failures)  # failed requests this run (rows: pass 2's)
    # Batch API: requests submitted in batches this run, and the tokens of the answers they brought
    # (billed at half price; their share of the totals above).
    batch_requests: int = 0
    batches: int = 0
    batch_results: int = 0  # results merged from batches this run (submitted by this run or an earlier one)
    batch_input_tokens: int = 0
    batch_output_tokens: int = 0
    batch_cached_tokens: int = 0
    # Packs (rows-per-request): answered packs by their number of rows, and rows sent again because
    # their pack's answer had no good item for them.
    pack_sizes: Counter[int] = field(default_factory=Counter)
    rows_resent: int = 0

    def record_request(self, rpm: float, tpm: float) -> None:
        """An attempt left, paced at these requests- and tokens-per-minute limits."""
        self.requests += 1
        self.timeline.sent(rpm, tpm)

    def record_pack(self, rows: int, resent: int) -> None:
        """A pack of `rows` rows was answered; `resent` of them go again, in smaller packs."""
        self.pack_sizes[rows] += 1
        self.rows_resent += resent

    def record_retry(self) -> None:
        self.retries += 1
        self.timeline.add(tl.RETRIES)

    def record_error(self, exc: ApiError) -> None:
        # HTTP errors by status; a transport failure (even a 200 with a broken body) by its class.
        self.errors[type(exc).__name__ if isinstance(exc, TransportError) or not exc.status
                    else str(exc.status)] += 1
        if isinstance(exc, RateLimited):
            self.rate_limited += 1
        self.timeline.add(tl.RATE_LIMITED if isinstance(exc, RateLimited) else tl.ERRORS)

    def record_answer(self, a: Answer, *, batch: bool = False, counted: bool = True) -> None:
        """An answer arrived; `counted` False: only its tokens count (a row of a pack that is sent again
        keeps what that pack cost it, but is neither answered nor failed yet)."""
        if batch:
            self.batch_results += 1
            self.batch_input_tokens += a.input_tokens or 0
            self.batch_output_tokens += a.output_tokens or 0
            self.batch_cached_tokens += a.cached_tokens or 0
        bucket = self.timeline.bucket()  # one look-up for this answer's counters over time
        if not counted:
            pass
        elif a.ok:
            self.answered += 1
            bucket[tl.ANSWERED] += 1
            if a.latency_s is not None:
                self.latency.add(a.latency_s)
            if a.queue_time is not None:
                self.queue.add(a.queue_time)
        else:
            self.failed += 1
            bucket[tl.FAILED] += 1
            self.failures.add(None, a.error or "", permanent=a.permanent)
        bucket[tl.INPUT_TOKENS] += a.input_tokens or 0
        bucket[tl.OUTPUT_TOKENS] += a.output_tokens or 0
        for name in fields.SUMMED:  # the usage counts of `batch.fields`, each a counter above
            setattr(self, name, getattr(self, name) + (getattr(a, name) or 0))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def per_minute(self, count: float) -> float:
        return count * 60.0 / max(self.elapsed(), 1e-9)


@dataclass
class Summary:
    status: str  # "complete", "failed-rows", "stopped", "fatal"
    rows: int
    rows_ok: int
    rows_failed: int
    rows_from_store: int
    requests_sent: int
    retries: int
    rate_limited_429: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    estimated_cost_usd: float | None
    elapsed_s: float
    requests_per_min: float
    tokens_per_min: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    peak_rss_mb: float | None
    model: str
    output: str | None
    errors: dict[str, int]
    message: str | None = None
    mode: str = "online"
    batch_requests: int = 0  # submitted to the Batch API this run (billed at half price)
    batches: int = 0
    batch_results: int = 0
    max_cost_usd: float | None = None  # the run's spend cap ([limits] max-cost-usd), if any
    latency_p99_s: float | None = None
    queue_time_p50_s: float | None = None  # Groq's queue time (usage.queue_time)
    queue_time_p95_s: float | None = None
    rows_from_store_failed: int = 0  # of rows_from_store, those failed (also counted in rows_failed)
    pack_sizes: dict[str, int] = field(default_factory=dict)  # rows-per-request: answered packs by size
    rows_resent: int = 0  # rows sent again in a smaller pack (their pack had no good item for them)

    @classmethod
    def build(cls, stats: RunStats, *, status: str, model: str, rows: int, rows_ok: int,
              rows_failed: int, rows_from_store: int, output: Path | None,
              message: str | None = None, mode: str = "online", max_cost_usd: float | None = None,
              rows_from_store_failed: int = 0) -> Summary:
        tokens = stats.input_tokens + stats.output_tokens
        cost = cost_usd(model, stats.input_tokens, stats.output_tokens, stats.cached_tokens)
        batch_cost = cost_usd(model, stats.batch_input_tokens, stats.batch_output_tokens,
                              stats.batch_cached_tokens)
        if cost is not None and batch_cost is not None:
            cost -= batch_cost / 2  # the Batch API bills half the list price
        return cls(
            status=status, rows=rows, rows_ok=rows_ok, rows_failed=rows_failed,
            rows_from_store=rows_from_store, rows_from_store_failed=rows_from_store_failed,
            requests_sent=stats.requests, retries=stats.retries,
            rate_limited_429=stats.rate_limited,
            **{name: getattr(stats, name) for name in fields.SUMMED},  # input, output, cached, ... tokens
            estimated_cost_usd=_round(cost, 6),
            elapsed_s=round(stats.elapsed(), 3),
            requests_per_min=round(stats.per_minute(stats.requests), 1),
            tokens_per_min=round(stats.per_minute(tokens), 1),
            latency_p50_s=_round(stats.latency.quantile(0.5), 3),
            latency_p95_s=_round(stats.latency.quantile(0.95), 3),
            latency_p99_s=_round(stats.latency.quantile(0.99), 3),
            queue_time_p50_s=_round(stats.queue.quantile(0.5), 4),
            queue_time_p95_s=_round(stats.queue.quantile(0.95), 4),
            peak_rss_mb=peak_rss_mb(),
            model=model, output=str(output) if output else None,
            errors=dict(stats.errors), message=message, mode=mode, batch_requests=stats.batch_requests,
            batches=stats.batches, batch_results=stats.batch_results, max_cost_usd=max_cost_usd,
            pack_sizes={str(k): v for k, v in sorted(stats.pack_sizes.items(), reverse=True)},
            rows_resent=stats.rows_resent)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def write_json(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)

    def human(self) -> str:
        cost = "unknown price" if self.estimated_cost_usd is None else f"${self.estimated_cost_usd:.4f}"
        lat = ("-" if self.latency_p50_s is None
               else f"p50 {self.latency_p50_s:.2f}s, p95 {self.latency_p95_s or 0:.2f}s")
        if self.status in ("stopped", "fatal"):  # no output was written: speak of this run only
            head = (f"batch: {self.status} — this run answered {self.rows_ok} requests, "
                    f"{self.rows_failed} failed; no output written")
        else:
            head = (f"batch: {self.status} — {self.rows} rows: {self.rows_ok} ok, {self.rows_failed} failed, "
                    f"{self.rows_from_store} answered from the store")
        lines = [
            head,
            f"  requests {self.requests_sent} ({self.retries} retries, {self.rate_limited_429} rate-limited) "
            f"in {_duration(self.elapsed_s)}: {self.requests_per_min:,.0f} req/min, "
            f"{self.tokens_per_min:,.0f} tokens/min; latency {lat}",
            f"  tokens this run: {self.input_tokens:,} in, {self.output_tokens:,} out "
            f"({self.cached_tokens:,} cached); estimated cost {cost} ({self.model})"
            + (f", spend cap {usd(self.max_cost_usd)} a run" if self.max_cost_usd is not None else ""),
        ]
        if self.mode == "batch":
            lines[1] = "  online " + lines[1].lstrip()
            lines.insert(1, f"  Batch API (billed at half price): {self.batch_requests:,} requests submitted "
                            f"this run in {self.batches} batch{'es' if self.batches != 1 else ''}; "
                            f"{self.batch_results:,} results collected")
        if self.pack_sizes:
            sizes = ", ".join(f"{k} rows x{v}" for k, v in self.pack_sizes.items())
            lines.append(f"  packs answered: {sizes}; {self.rows_resent:,} rows sent again in smaller packs")
        if self.errors:
            kinds = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))
            lines.append(f"  errors by kind: {kinds}")
        if self.output:
            lines.append(f"  output: {self.output}")
        if self.message:
            lines.append(f"  {self.message}")
        return "\n".join(lines)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory, in MB (Linux; None elsewhere). Read from VmHWM, which
    starts afresh at exec — unlike ru_maxrss, which inherits the peak of the process that forked it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")
