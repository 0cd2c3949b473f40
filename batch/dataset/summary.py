"""The report of a partitioned run: the parts' reports added up into one `Summary`, written beside the
output folder as `<output>.report.json` (local or remote), with the same fields as a one-file run.

Counts, tokens and cost add up; the pace is this run's requests over its wall-clock time; latency
percentiles are approximations from the parts' own (p50: the mean of the parts' p50 weighted by their
requests; p95: the highest part's p95), as the parts' histograms stay on the workers. A part done by an
earlier run counts its rows (as answered from the store) and nothing else. A run stopped by its spend
cap (one cap for all the parts) says so once, with the run's cost as this report counts it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from batch.dataset import partitions
from batch.fields import SUMMED as USAGE
from batch.report.summary import Summary
from batch.send.spendcap import cap_message

if TYPE_CHECKING:
    from batch.job.config import Job

# The counts that add up across parts: the run's, and the answer's usage counts (`batch.fields`).
_SUMMED = ("rows", "rows_ok", "rows_failed", "rows_from_store", "requests_sent", "retries",
           "rate_limited_429", *USAGE, "batch_requests", "batches", "batch_results")


@dataclass(frozen=True)
class PartOutcome:
    """What became of one partition (plain values: it travels back from a cluster worker)."""

    index: int
    status: str  # a Summary status, "skipped" (done by an earlier run), or "invalid" (exit 2)
    summary: dict[str, Any] | None  # the part's report; for a skipped part, the earlier run's
    message: str | None = None


def merge(job: Job, outcomes: Sequence[PartOutcome], *, total: int, elapsed_s: float,
          capped: bool = False) -> Summary:
    sums: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    cost: float | None = 0.0
    p50_weighted = 0.0
    p95: float | None = None
    rss: float | None = None
    for o in outcomes:
        s: dict[str, Any] = o.summary or {}
        if not s:  # a part stopped before it started: nothing to add (its cost is not unknown, but 0)
            continue
        if o.status == "skipped":
            for k in ("rows", "rows_ok", "rows_failed"):
                sums[k] += int(s.get(k) or 0)
            sums["rows_from_store"] += int(s.get("rows") or 0)
            continue
        for k in _SUMMED:
            sums[k] += int(s.get(k) or 0)
        errors.update(s.get("errors") or {})
        c = s.get("estimated_cost_usd")
        cost = None if c is None or cost is None else cost + float(c)
        if s.get("latency_p50_s") is not None:
            p50_weighted += float(s["latency_p50_s"]) * int(s.get("requests_sent") or 0)
        if s.get("latency_p95_s") is not None:
            p95 = max(p95 or 0.0, float(s["latency_p95_s"]))
        if s.get("peak_rss_mb") is not None:
            rss = max(rss or 0.0, float(s["peak_rss_mb"]))
    statuses = {o.status for o in outcomes}
    status = ("fatal" if "fatal" in statuses else "stopped" if "stopped" in statuses or len(outcomes) < total
              else "failed-rows" if sums["rows_failed"] else "complete")
    minutes = max(elapsed_s, 1e-9) / 60.0
    tokens = sums["input_tokens"] + sums["output_tokens"]
    messages = [o.message for o in outcomes if o.message]
    message = messages[0] if messages else (f"{sums['rows_failed']} rows failed; see the error column."
                                            if sums["rows_failed"] else None)
    if capped and job.limits.max_cost_usd is not None and "fatal" not in statuses:
        message = cap_message(round(cost or 0.0, 6), job.limits.max_cost_usd)
    values: dict[str, Any] = {k: sums[k] for k in _SUMMED}
    values.update(
        status=status, estimated_cost_usd=None if cost is None else round(cost, 6),
        elapsed_s=round(elapsed_s, 3), requests_per_min=round(sums["requests_sent"] / minutes, 1),
        tokens_per_min=round(tokens / minutes, 1),
        latency_p50_s=round(p50_weighted / sums["requests_sent"], 3) if sums["requests_sent"] else None,
        latency_p95_s=p95, peak_rss_mb=rss, model=job.task.model, output=job.output.dataset,
        errors=dict(errors), message=message, mode="online", max_cost_usd=job.limits.max_cost_usd)
    # Every figure a part reports is added up or derived above; any other keeps Summary's default.
    assert set(values) <= {f.name for f in fields(Summary)}
    return Summary(**values)


def report_location(job: Job) -> str:
    assert job.output.dataset is not None
    return partitions.beside(job.output.dataset, ".report.json")


def finish(job: Job, outcomes: Sequence[PartOutcome], *, total: int, started: float,
           capped: bool = False) -> Summary:
    """The run's summary (`started`: its `time.monotonic()` start), written beside the output folder;
    `capped`: the run stopped at its spend cap."""
    elapsed = time.monotonic() - started
    summary = merge(job, sorted(outcomes, key=lambda o: o.index), total=total, elapsed_s=elapsed,
                    capped=capped)
    partitions.write_text(report_location(job), summary.to_json() + "\n")
    return summary
