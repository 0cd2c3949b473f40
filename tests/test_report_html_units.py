"""The run report's data, without a run: the timeline's buckets, the size of a long run's report, what
the store and the ledger keep for it (and what an older store without those tables still gives)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from batch.errors import RateLimited, ServerError
from batch.records import Answer
from batch.report.html.write import write_html
from batch.report.summary import RunStats, Summary
from batch.report.timeline import COLUMNS, Failures, Histogram, Timeline, error_kind
from batch.store import runlog
from batch.store.answers import Store
from batch.store.ledger import Ledger

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def long_run(clock: Clock, hours: float, events: int) -> RunStats:
    """A run of `hours` hours with `events` requests evenly over it: answers, 429s, retries, failures."""
    stats = RunStats(timeline=Timeline(clock=clock))
    step = hours * 3600 / events
    for i in range(events):
        clock.now += step
        stats.record_request(3000.0 if i < events // 2 else 2900.0, 500_000.0)
        if i % 97 == 0:
            stats.record_error(RateLimited("slow down", status=429, limit="rpm", limit_value=3000))
            stats.record_retry()
        elif i % 89 == 0:
            stats.record_error(ServerError("boom", status=500))
            stats.record_retry()
        elif i % 1009 == 0:
            stats.record_answer(Answer.failure(f"fp{i}", "400 invalid_value: no", permanent=True, attempts=1))
        else:
            stats.record_answer(Answer(f"fp{i}", text="ok", input_tokens=40 + i % 50, output_tokens=90,
                                       latency_s=0.2 + (i % 300) / 100, queue_time=0.01 + (i % 7) / 1000))
    return stats


def test_the_timeline_coarsens_and_keeps_every_count() -> None:
    clock = Clock()
    stats = long_run(clock, hours=72, events=60_000)
    tl = stats.timeline.to_dict()

    assert len(tl["second"]) <= 1200 and tl["width"] in (256, 512)  # powers of two seconds
    assert tl["second"] == sorted(tl["second"]) and all(s % tl["width"] == 0 for s in tl["second"])
    assert sum(tl["requests"]) == stats.requests == 60_000
    assert sum(tl["rate_limited"]) == stats.rate_limited and sum(tl["retries"]) == stats.retries
    assert sum(tl["answered"]) == stats.answered and sum(tl["failed"]) == stats.failed
    assert sum(tl["input_tokens"]) == stats.input_tokens
    assert sum(tl["errors"]) == sum(stats.errors.values()) - stats.rate_limited
    assert tl["rpm"][0] == 3000 and tl["rpm"][-1] == 2900  # the limit in force at each bucket's end
    assert set(tl) == {"started", "width", "second", *COLUMNS}


def test_a_days_long_run_keeps_kilobytes_and_its_page_stays_under_a_megabyte(tmp_path: Path) -> None:
    clock = Clock()
    stats = long_run(clock, hours=49, events=150_000)
    summary = Summary.build(stats, status="failed-rows", model="openai/gpt-oss-20b", rows=150_000,
                            rows_ok=stats.answered, rows_failed=stats.failed, rows_from_store=0,
                            output=tmp_path / "out.parquet")
    figures = {"timeline": stats.timeline.to_dict(), "latency": stats.latency.to_dict(),
               "queue": stats.queue.to_dict(), "failures": stats.failures.to_dict(),
               "limits": {"rpm": "job", "tpm": "learned"}, "run": 12}
    kept = json.dumps(figures, separators=(",", ":"))
    assert len(kept) < 120_000, "the figures a run keeps in the store must stay kilobytes"
    history = [{"run": i, "started": 1.7e9 + i * DAY, "status": "complete", "mode": "online", "rows": 10**6,
                "requests": 10**6, "input_tokens": 4 * 10**7, "output_tokens": 9 * 10**7,
                "cost_usd": 12.5 + i} for i in range(1, 13)]
    batches = [{"name": f"batch-x-{i}-abc.jsonl", "batch_id": f"batch_{i:04d}", "status": "completed",
                "lines": 50_000, "counts": json.dumps({"total": 50_000, "completed": 49_990, "failed": 10}),
                "times": {"prepared": 1.7e9 + i * 60, "validating": 1.7e9 + i * 60 + 30,
                          "in_progress": 1.7e9 + i * 60 + 300, "completed": 1.7e9 + i * 900 + 3600,
                          "merged": 1.7e9 + i * 900 + 3700}} for i in range(400)]
    shown = {**json.loads(summary.to_json()), "max_cost_usd": 25.0}  # with a spend cap
    data = {"job": "long.toml", "generated": 1.7e9, "summary": shown,
            "figures": figures, "history": history, "batches": batches}
    page = tmp_path / "long.report.html"

    assert write_html(data, page)

    text = page.read_text(encoding="utf-8")
    assert len(text.encode()) < 1024 * 1024
    assert text.count("<svg") == 5 and text.count("<script") == 0
    assert "The last 60 of the job&#x27;s 400 submissions are shown." in text
    assert 'data-key="max_cost_usd" data-value="25.0"' in text and "the spend cap, $25.00 per run" in text


def test_histograms_and_failures_stay_small() -> None:
    h = Histogram()
    for i in range(100_000):
        h.add(0.05 + (i % 1000) / 100)
    d = h.to_dict()
    assert sum(d["count"]) == h.count == 100_000 and len(d["upper"]) < 400
    f = Failures(keep=3)
    for i in range(50):
        f.add(i, "500: boom" if i % 2 else "the model returned no text (finish_reason 'length')")
    assert [r for r, _ in f.first] == [0, 1, 2]
    assert f.kinds == {"HTTP 500": 25, "no text (budget spent)": 25}
    f.first.clear()
    f.add(7, "400 invalid_value: " + "x" * 5000)
    assert len(f.first[0][1]) < 700


def test_error_kinds_name_what_this_program_writes() -> None:
    assert error_kind("429 rate_limit_exceeded: slow") == "HTTP 429"
    assert error_kind("request too large: about 9000 tokens") == "too large for the limit"
    assert error_kind("connection reset by peer", permanent=False) == "connection or timeout"
    assert error_kind("something else") == "other"


def _summary(status: str, cost: float) -> str:
    return json.dumps({"status": status, "rows": 3, "estimated_cost_usd": cost, "requests_sent": 3})


def test_the_store_keeps_each_runs_figures_and_the_history_includes_stopped_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    def finished_run(s: Store) -> None:
        s.begin_run()
        s.finish_run(_summary("complete", 0.5))
        runlog.save_figures(s, _summary("complete", 0.5), '{"a": 1}')

    with_store(path, finished_run)
    with_store(path, lambda s: s.begin_run())  # stopped: no summary in runs ...
    with_store(path, lambda s: runlog.save_figures(s, _summary("stopped", 0.25), '{"b": 2}'))  # ... but here

    store = Store(path, readonly=True)
    try:
        history = runlog.run_history(store, 5)
        assert [(r[0], json.loads(r[2])["status"], r[3]) for r in history] == [
            (2, "stopped", '{"b": 2}'), (1, "complete", '{"a": 1}')]
        assert runlog.last_summary(store) == _summary("complete", 0.5)  # `status` still sees finished runs
    finally:
        store.close()


def test_a_store_from_before_the_report_still_gives_its_history(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with_store(path, lambda s: (s.begin_run(), s.finish_run(_summary("complete", 1.0))))
    db = sqlite3.connect(path)
    db.execute("DROP TABLE run_figures")
    db.execute("PRAGMA user_version = 0")  # such a store counted no migrations
    db.commit()
    db.close()

    old = Store(path, readonly=True)
    try:
        assert [(r[0], r[3]) for r in runlog.run_history(old, 5)] == [(1, None)]
    finally:
        old.close()
    with_store(path, lambda s: runlog.save_figures(s, _summary("complete", 1.0), "{}"))  # created on open


def test_the_ledger_stamps_each_status_once_and_prefers_groqs_times(tmp_path: Path) -> None:
    def steps(store: Store) -> list[dict[str, Any]]:
        ledger = Ledger(store)
        u = ledger.add("batch-x", "abc", ["fp1", "fp2"], 10)
        ledger.update(u.id, batch_id="batch_1", status="validating")
        first = ledger.timelines()[0]["times"]["validating"]
        ledger.update(u.id, status="validating")  # seen again: the first sighting stays
        ledger.update(u.id, status="in_progress")  # seen by a poll; Groq's own time replaces it below
        ledger.update(u.id, status="completed", batch={"in_progress_at": 1_700_000_100,
                                                       "completed_at": 1_700_000_200, "created_at": 5,
                                                       "failed_at": None})
        ledger.update(u.id, status="completed", done=1)
        out = ledger.timelines()
        assert out[0]["times"]["validating"] == first
        return out

    [item] = with_store(tmp_path / "s.sqlite", steps)
    times = item["times"]
    assert set(times) == {"prepared", "validating", "in_progress", "completed", "merged"}
    assert times["in_progress"] == 1_700_000_100 and times["completed"] == 1_700_000_200
    assert item["batch_id"] == "batch_1" and item["lines"] == 2


def with_store(path: Path, action: Any) -> Any:
    store = Store(path)
    try:
        return action(store)
    finally:
        store.close()


def test_a_run_does_not_import_matplotlib_until_it_draws_the_report() -> None:
    code = ("import sys, batch.doors.cli, batch.engine.run, batch.doors.commands, batch.report.html.write; "
            "print('matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
