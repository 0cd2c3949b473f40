"""`python -m batch plan`: what a run would send, cost and take — without sending anything.

Tokens are estimated the way the pacer reserves them: prompt tokens as the request body's UTF-8 bytes
/ 4 (counting the JSON around the text, so it errs high), and output tokens as the completion budget
(`max-new-tokens`, or 1,024 when unset) — an upper bound, since most answers stop earlier. The cost
uses the model's list price (and the Batch API's half price for comparison); the duration is the
larger of requests / requests-per-minute and tokens / tokens-per-minute, at the job's limits. In batch
mode the headline cost is the Batch API's half price, and the time is the completion window.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from batch.batchapi.files import request_line, starts_new_file
from batch.engine.preflight import check_job
from batch.job import catalog
from batch.job.catalog import usd as _usd
from batch.job.config import Job
from batch.render.prompts import renderer_for
from batch.store.answers import Store
from batch.store.ledger import Ledger
from batch.tables.source import Rows

SHOWN = 3  # rendered requests shown
SHORTEN = 200  # characters of a long string (an inline image, a long prompt) shown


@dataclass
class Plan:
    rows: int
    invalid_rows: int
    requests: int  # distinct requests (identical rows share one)
    answered: int  # of those, already answered in the store (a run would not send them)
    prompt_tokens: int  # estimated, for the requests still to send
    completion_tokens: int  # upper bound: the completion budget of each
    cost_usd: float | None
    batch_cost_usd: float | None
    minutes: float
    requests_per_minute: float
    tokens_per_minute: float
    examples: list[dict[str, Any]]
    in_batches: int = 0  # of the requests not answered, those held by Batch API batches not collected yet
    mode: str = "online"
    batch_files: int = 0  # batch mode: JSONL files the requests to send make (50,000 lines / 100 MB each)
    max_cost_usd: float | None = None  # [limits] max-cost-usd: the most one run may spend
    runs: int | None = None  # with a cap: the runs the worst case needs (each run spends at most the cap)


def make_plan(job: Job, limit: int | None = None, mode: str | None = None, *, data: Rows | None = None
              ) -> Plan:
    source = check_job(job, data)
    renderer = renderer_for(job, env=os.environ)
    store = Store(job.state.path, readonly=True) if job.state.path.exists() else None
    rows = invalid = answered = held = prompt = completion = 0
    files = ChunkCounter()
    seen: set[str] = set()  # distinct fingerprints; the plan is a one-off, so this may grow
    examples: list[dict[str, Any]] = []
    try:
        for row0, chunk in source.numbered(limit):
            # Group by group: a chunk of rows with large images is never held rendered whole.
            for group in renderer.groups(chunk, row0):
                fresh = [fp for fp in group.fingerprints if fp is not None and fp not in seen]
                done = store.get_many(fresh) if store else {}
                in_batches = Ledger(store).held(fresh) if store else set()
                for i, fp in enumerate(group.fingerprints):
                    rows += 1
                    if fp is None:
                        invalid += 1
                        continue
                    if fp in seen:
                        continue
                    seen.add(fp)
                    if len(examples) < SHOWN:
                        examples.append(_shorten(json.loads(group.request(i).body)))
                    if fp in done and (done[fp][0].ok or done[fp][0].permanent):
                        answered += 1
                        continue
                    if fp in in_batches:  # already submitted: a run collects it, sends nothing
                        held += 1
                        continue
                    r = group.request(i)
                    prompt += r.est_tokens - renderer.completion_budget
                    completion += renderer.completion_budget
                    files.add(len(request_line(r)))
    finally:
        if store:
            store.close()
    base = catalog.limits_for(job.task.model)
    rpm = float(job.limits.requests_per_minute or base.rpm)
    tpm = float(job.limits.tokens_per_minute or base.tpm)
    to_send = len(seen) - answered - held
    cost = catalog.cost_usd(job.task.model, prompt, completion)
    headline = None if cost is None else cost / 2 if (mode or job.run.mode) == "batch" else cost
    cap = job.limits.max_cost_usd
    runs = None if cap is None or headline is None else max(1, math.ceil(headline / cap))
    return Plan(rows=rows, invalid_rows=invalid, requests=len(seen), answered=answered,
                prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                batch_cost_usd=None if cost is None else cost / 2,
                minutes=max(to_send / rpm, (prompt + completion) / tpm), requests_per_minute=rpm,
                tokens_per_minute=tpm, examples=examples, in_batches=held, mode=mode or job.run.mode,
                batch_files=files.files, max_cost_usd=cap, runs=runs)


class ChunkCounter:
    """How many Batch API files lines of these sizes fill, cut as `batchapi.files.ChunkWriter` cuts them."""

    def __init__(self) -> None:
        self.files = self._lines = self._bytes = 0

    def add(self, size: int) -> None:
        if not self.files or starts_new_file(self._lines, self._bytes, size):
            self.files, self._lines, self._bytes = self.files + 1, 0, 0
        self._lines += 1
        self._bytes += size


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHORTEN:
        return f"{value[:SHORTEN]}... ({len(value):,} characters)"
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


def describe(plan: Plan, job: Job) -> str:
    usd = "unknown (no price for this model)" if plan.cost_usd is None else (
        f"{_usd(plan.cost_usd)} at most (Batch API: {_usd(plan.batch_cost_usd or 0)})")
    time = (f"about {_minutes(plan.minutes)} at {plan.requests_per_minute:,.0f} requests/min and "
            f"{plan.tokens_per_minute:,.0f} tokens/min (completion tokens counted at their budget)")
    if plan.mode == "batch":
        usd = "unknown (no price for this model)" if plan.batch_cost_usd is None else (
            f"{_usd(plan.batch_cost_usd)} at most, at the Batch API's half price (online: "
            f"{_usd(plan.cost_usd or 0)})")
        time = (f"within the completion window ({job.run.completion_window}), in {plan.batch_files} "
                "Batch API file(s) of at most 50,000 requests and 100 MB")
    lines = [f"{job.file}: {plan.rows:,} rows -> {plan.requests:,} distinct requests "
             f"({plan.invalid_rows:,} invalid rows, {plan.answered:,} already answered in the store"
             + (f", {plan.in_batches:,} in Batch API batches not collected yet" if plan.in_batches else "")
             + ")",
             f"to send: {plan.requests - plan.answered - plan.in_batches:,} requests, about "
             f"{plan.prompt_tokens:,} prompt tokens + at most {plan.completion_tokens:,} completion tokens "
             f"({job.task.model})",
             f"cost: {usd}",
             *([f"spend cap: {_usd(plan.max_cost_usd)} a run ([limits] max-cost-usd): at most {plan.runs} "
                f"run{'s' if plan.runs != 1 else ''} at the worst case (each stops at the cap with exit 3, "
                "and the next continues)"] if plan.max_cost_usd is not None else []),
             f"time: {time}",
             "", f"first {len(plan.examples)} request bodies:"]
    lines += [json.dumps(e, ensure_ascii=False, indent=2) for e in plan.examples]
    return "\n".join(lines)


def _minutes(m: float) -> str:
    return f"{m * 60:.0f} s" if m < 1 else f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h"
