"""`python -m batch plan`: what a run would send, cost and take — without sending anything.

Tokens are estimated the way the pacer reserves them: prompt tokens as the request body's UTF-8 bytes
/ 4 (counting the JSON around the text, so it errs high), and output tokens as the completion budget
(`max-new-tokens`, or 1,024 when unset) — an upper bound, since most answers stop earlier. The cost
uses the model's list price (and the Batch API's half price for comparison); the duration is the
larger of requests / requests-per-minute and tokens / tokens-per-minute, at the job's limits. In batch
mode the headline cost is the Batch API's half price, and the time is the completion window.

With `rows-per-request` above 1 the requests to send are packed as a run packs them (`render.packer`,
at the job's tokens-per-minute limit): the headline figures are the packs' (the shared part once a
pack, `max-new-tokens` once a pack), and `unpacked` keeps the same figures one row a request, so the
saving shows.
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
from batch.job.schema import shape_of
from batch.records import Request
from batch.render.packer import packer_for
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
    packed_requests: int = 0  # the requests a run sends for what is to send (packs, and rows alone)
    in_batches: int = 0  # of the requests not answered, those held by Batch API batches not collected yet
    mode: str = "online"
    batch_files: int = 0  # batch mode: JSONL files the requests to send make (50,000 lines / 100 MB each)
    max_cost_usd: float | None = None  # [limits] max-cost-usd: the most one run may spend
    runs: int | None = None  # with a cap: the runs the worst case needs (each run spends at most the cap)
    rows_per_request: int = 1
    # With rows-per-request > 1: the requests to send one row a request (`requests`, `prompt_tokens`,
    # `completion_tokens`, `cost_usd`, `minutes`), beside the packed figures above.
    unpacked: dict[str, Any] | None = None


def make_plan(job: Job, limit: int | None = None, mode: str | None = None, *, data: Rows | None = None
              ) -> Plan:
    source = check_job(job, data)
    renderer = renderer_for(job, env=os.environ)
    store = Store(job.state.path, readonly=True) if job.state.path.exists() else None
    rows = invalid = answered = held = prompt = completion = 0
    files = ChunkCounter()
    base = catalog.limits_for(job.task.model)
    rpm = float(job.limits.requests_per_minute or base.rpm)
    tpm = float(job.limits.tokens_per_minute or base.tpm)
    packer = packer_for(renderer, shape_of(job.task.response_format), tries=job.limits.max_attempts,
                        tokens_per_minute=lambda: tpm)
    single = Totals()  # the requests to send, one row a request
    share = -(-renderer.completion_budget // renderer.rows_per_request)
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
                    if len(examples) < SHOWN and packer is None:
                        examples.append(_shorten(json.loads(group.request(i).body)))
                    if fp in done and (done[fp][0].ok or done[fp][0].permanent):
                        answered += 1
                        continue
                    if fp in in_batches:  # already submitted: a run collects it, sends nothing
                        held += 1
                        continue
                    r = group.request(i)
                    single.add(r, renderer.completion_budget, share)
                    for sent in packer.add(r) if packer is not None else (r,):
                        prompt, completion = _sent(sent, renderer.completion_budget, prompt, completion,
                                                   files, examples)
        for sent in packer.flush() if packer is not None else ():
            prompt, completion = _sent(sent, renderer.completion_budget, prompt, completion, files, examples)
    finally:
        if store:
            store.close()
    to_send = files.lines
    cost = catalog.cost_usd(job.task.model, prompt, completion)
    headline = None if cost is None else cost / 2 if (mode or job.run.mode) == "batch" else cost
    cap = job.limits.max_cost_usd
    runs = None if cap is None or headline is None else max(1, math.ceil(headline / cap))
    return Plan(rows=rows, invalid_rows=invalid, requests=len(seen), answered=answered,
                prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                batch_cost_usd=None if cost is None else cost / 2,
                minutes=max(to_send / rpm, (prompt + completion) / tpm), requests_per_minute=rpm,
                tokens_per_minute=tpm, examples=examples, packed_requests=to_send, in_batches=held,
                mode=mode or job.run.mode, batch_files=files.files, max_cost_usd=cap, runs=runs,
                rows_per_request=renderer.rows_per_request,
                unpacked=None if packer is None else single.figures(job.task.model, rpm, tpm))


@dataclass
class Totals:
    """Requests and their estimated tokens, one row a request."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, r: Request, budget: int, share: int) -> None:
        """A row's request of completion budget `budget`, counted alone with `share` of it (its share
        of a pack's budget: the same answers, asked one at a time)."""
        self.requests += 1
        self.prompt_tokens += r.est_tokens - budget
        self.completion_tokens += share

    def figures(self, model: str, rpm: float, tpm: float) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": catalog.cost_usd(model, self.prompt_tokens, self.completion_tokens),
                "minutes": max(self.requests / rpm, (self.prompt_tokens + self.completion_tokens) / tpm)}


def _sent(r: Request, budget: int, prompt: int, completion: int, files: ChunkCounter,
          examples: list[dict[str, Any]]) -> tuple[int, int]:
    """A request a run would send (a pack, or a row alone): its tokens added, its line counted."""
    if len(examples) < SHOWN and r.pack is not None:
        examples.append(_shorten(json.loads(r.body)))
    files.add(len(request_line(r)))
    return prompt + r.est_tokens - budget, completion + budget


class ChunkCounter:
    """How many Batch API files lines of these sizes fill, cut as `batchapi.files.ChunkWriter` cuts them."""

    def __init__(self) -> None:
        self.files = self.lines = self._lines = self._bytes = 0

    def add(self, size: int) -> None:
        if not self.files or starts_new_file(self._lines, self._bytes, size):
            self.files, self._lines, self._bytes = self.files + 1, 0, 0
        self.lines += 1  # every request, across files
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
             f"to send: {_sending(plan)} about "
             f"{plan.prompt_tokens:,} prompt tokens + at most {plan.completion_tokens:,} completion tokens "
             f"({job.task.model})",
             f"cost: {usd}",
             *([f"spend cap: {_usd(plan.max_cost_usd)} a run ([limits] max-cost-usd): at most {plan.runs} "
                f"run{'s' if plan.runs != 1 else ''} at the worst case (each stops at the cap with exit 3, "
                "and the next continues)"] if plan.max_cost_usd is not None else []),
             f"time: {time}",
             *_unpacked(plan),
             "", f"first {len(plan.examples)} request bodies:"]
    lines += [json.dumps(e, ensure_ascii=False, indent=2) for e in plan.examples]
    return "\n".join(lines)


def _sending(plan: Plan) -> str:
    rows = plan.requests - plan.answered - plan.in_batches
    if plan.unpacked is None:
        return f"{rows:,} requests,"
    return (f"{rows:,} rows in {plan.packed_requests:,} requests (up to {plan.rows_per_request} rows a "
            "request),")


def _unpacked(plan: Plan) -> list[str]:
    """The same rows one a request, for comparison (`rows-per-request` = 1)."""
    u = plan.unpacked
    if u is None:
        return []
    cost = "unknown" if u["cost_usd"] is None else _usd(u["cost_usd"])
    return [f"one row a request instead: {u['requests']:,} requests, about {u['prompt_tokens']:,} prompt "
            f"tokens + at most {u['completion_tokens']:,} completion tokens, {cost} at most, about "
            f"{_minutes(u['minutes'])} (rows-per-request = 1, each row's budget its share of max-new-tokens)"]


def _minutes(m: float) -> str:
    return f"{m * 60:.0f} s" if m < 1 else f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h"
