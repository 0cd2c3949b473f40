"""The spend cap ([limits] max-cost-usd): the budget's arithmetic, the pool under it in virtual time,
and a run that stops at the cap (exit 3) and is continued by the next run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli_env
from fakeclock import run_virtual
from nasty import write_csv
from test_pool import FakeApi, request

from batch.job.catalog import cost_usd
from batch.records import Answer, Request
from batch.report.summary import RunStats
from batch.send.pacing import Pacer
from batch.send.pool import Pool
from batch.send.retry import RetryPolicy
from batch.send.spendcap import SpendCap
from batch.sim import Simulator

MODEL = "openai/gpt-oss-20b"  # $0.075 in, $0.30 out per million tokens
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
# A request of 1,100 estimated tokens, 1,000 of them the completion budget: at worst $0.0003075.
WORST = (100 * 0.075 + 1000 * 0.30) / 1e6
# What FakeApi's answers cost (4 tokens in, 6 out).
ACTUAL = (4 * 0.075 + 6 * 0.30) / 1e6


def test_the_worst_case_is_the_prompt_and_the_whole_completion_budget_at_list_price() -> None:
    budget = SpendCap(0.001, MODEL, completion_budget=1000)
    assert budget.worst(1100) == pytest.approx(WORST)
    assert budget.worst(1100, batch=True) == pytest.approx(WORST / 2)
    first = budget.try_reserve(1100)
    assert first is not None and first == pytest.approx(WORST) and budget.reserved_usd == pytest.approx(WORST)
    budget.settle(first, Answer("fp", input_tokens=4, output_tokens=6))
    assert budget.reserved_usd == 0.0 and budget.spent_usd == pytest.approx(ACTUAL)
    reserved = [budget.try_reserve(1100) for _ in range(4)]
    assert reserved[3] is None and budget.reached, "a fourth worst case does not fit in $0.001"
    assert budget.message().startswith("spend cap reached: $0.000002 of $0.001 spent by this run")


def test_an_answer_without_usage_counts_its_whole_reservation() -> None:
    budget = SpendCap(1.0, MODEL, completion_budget=1000)
    cost = budget.try_reserve(1100)
    assert cost is not None
    budget.settle(cost, Answer("fp"))
    assert budget.spent_usd == pytest.approx(WORST)


def capped_pool(cap: float, n: int, concurrency: int) -> tuple[Pool, list[Answer], SpendCap, FakeApi]:
    api = FakeApi(latency=0.5)
    answers: list[Answer] = []
    budget = SpendCap(cap, MODEL, completion_budget=1000)
    pool = Pool(api, Pacer(10**9, 10**12), RetryPolicy(), concurrency=concurrency, on_answer=answers.append,
                stats=RunStats(), spend_cap=budget)
    reqs: list[Request] = [request(i, est_tokens=1100) for i in range(n)]
    run_virtual(pool.run(reqs))
    return pool, answers, budget, api


def test_the_pool_hands_back_unused_reservations_and_stops_at_the_cap() -> None:
    # $0.001 holds 3 worst cases at once; the answers cost far less, so requests go on while what is
    # really spent leaves room for one more worst case: 0.001 - WORST = 0.0006925, about 329 answers.
    pool, answers, budget, api = capped_pool(0.001, 400, concurrency=8)
    sent = len(api.starts)
    assert 300 < sent < 400, sent
    assert len(answers) == sent and all(a.ok for a in answers)
    assert pool.stop_reason == "spend cap reached" and budget.reached
    assert budget.spent_usd == pytest.approx(sent * ACTUAL)
    assert budget.spent_usd + WORST > 0.001 - WORST, "it stopped while a worst case still fitted"
    assert budget.spent_usd <= 0.001 and budget.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert api.max_in_flight <= 3, "more worst cases were out at once than the cap holds"


def test_a_cap_that_holds_every_request_changes_nothing() -> None:
    pool, answers, budget, _ = capped_pool(1.0, 50, concurrency=8)
    assert len(answers) == 50 and pool.stop_reason is None and not budget.reached


def test_a_cap_below_one_worst_case_sends_nothing() -> None:
    pool, answers, budget, api = capped_pool(WORST / 2, 5, concurrency=2)
    assert api.starts == [] and answers == [] and budget.reached and pool.stop_reason == "spend cap reached"


def rows(n: int) -> list[dict[str, str | None]]:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"experience number {i}"} for i in range(n)]


def test_a_run_stops_at_the_cap_and_the_next_run_continues(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(rows(40), tmp_path / "in.csv")
    # Each request: ~60 prompt tokens + 100 completion at most, about $0.000035 at worst; the
    # simulator's short answers cost about $0.000007 each: $0.0001 pays for about 10 of them.
    job = write_job("in.csv", task={"max-new-tokens": 100}, limits={"max-cost-usd": 0.0001, "concurrency": 2})
    report = tmp_path / "out.parquet.report.json"

    plan = subprocess.run([sys.executable, "-m", "batch", "plan", str(job), "--json"], cwd=tmp_path,
                          env=cli_env(None), capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["max_cost_usd"] == 0.0001 and planned["runs"] >= 2
    text = subprocess.run([sys.executable, "-m", "batch", "plan", str(job)], cwd=tmp_path,
                          env=cli_env(None), capture_output=True, text=True, timeout=60).stdout
    runs_text = f"at most {planned['runs']} runs at the worst case"
    assert f"spend cap: $0.0001 a run ([limits] max-cost-usd): {runs_text}" in text

    first = run_batch(job, "--base-url", url)
    assert first.returncode == 3, first.stderr
    assert re.search(r"spend cap reached: \$0\.\d+ of \$0\.0001 spent by this run", first.stderr)
    assert "the next run continues" in first.stderr
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["status"] == "stopped" and summary["max_cost_usd"] == 0.0001
    assert summary["estimated_cost_usd"] <= 0.0001
    sent = len(sim.log)
    assert 3 <= sent < 40
    cost = cost_usd(MODEL, summary["input_tokens"], summary["output_tokens"])
    assert cost is not None and cost <= 0.0001

    runs = 1
    while (proc := run_batch(job, "--base-url", url)).returncode == 3 and runs < 10:
        runs += 1
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == 40, "a request was paid for twice, or one was never sent"
    assert json.loads(report.read_text(encoding="utf-8"))["max_cost_usd"] == 0.0001


def test_a_batch_mode_run_submits_what_fits_at_half_price(
        tmp_path: Path, start_sim: Callable[..., tuple[str, Simulator]], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    url, sim = start_sim(batch_validate_s=0.05, batch_finalize_s=0.05)
    write_csv(rows(30), tmp_path / "in.csv")
    # At half price a worst case is about $0.0000175: $0.0001 holds 5 of them (kept until merged).
    job = write_job("in.csv", task={"max-new-tokens": 100}, limits={"max-cost-usd": 0.0001},
                    run={"mode": "batch", "poll-interval": 0.2})
    first = run_batch(job, "--base-url", url)
    assert first.returncode == 3, first.stderr
    assert "spend cap reached" in first.stderr
    (batch,) = sim.batches.values()
    assert 3 <= batch.total <= 6, batch.total
    runs = 1
    while (proc := run_batch(job, "--base-url", url)).returncode == 3 and runs < 12:
        runs += 1
    assert proc.returncode == 0, proc.stderr
    assert sum(b.total for b in sim.batches.values()) == 30 and sim.log == []
