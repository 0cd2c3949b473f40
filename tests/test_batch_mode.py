"""Batch mode end to end: `python -m batch run` as a subprocess against the simulator's files and
batches endpoints on a real socket, with kills at the two moments that could make a run pay twice."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import HANG_GUARD_S, BackgroundLoop, cli_env, wait_until
from fakeclock import HeldClock
from nasty import write_csv
from test_e2e import (
    PROMPT,
    _spawn,
    _stderr,
    check_columns,
    check_rows,
    plain_rows,
    read_output,
)

from batch.job.catalog import cost_usd
from batch.sim import SimConfig, Simulator

StartSim = Callable[..., tuple[str, Simulator]]
WriteJob = Callable[..., Path]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST: dict[str, Any] = {"batch_validate_s": 0.05, "batch_finalize_s": 0.05}
RUN = {"mode": "batch", "poll-interval": 0.2}


def _rows_and_job(tmp_path: Path, write_job: WriteJob, n: int,
                  **run: Any) -> tuple[list[dict[str, Any]], Path]:
    """`n` plain rows in in.csv and a batch-mode job over them (`run`: more [run] keys, snake_case)."""
    rows = plain_rows(n)
    write_csv(rows, tmp_path / "in.csv")
    extra = {k.replace("_", "-"): v for k, v in run.items()}
    return rows, write_job("in.csv", task={"prompt": PROMPT}, run={**RUN, **extra})


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)


def test_a_300_row_job_is_answered_through_batches_alone(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST)
    rows, job = _rows_and_job(tmp_path, write_job, 300)

    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    assert sim.log == [], "batch mode sent online requests"
    assert (sim.uploads, sim.batches_created) == (1, 1)
    (batch,) = sim.batches.values()
    assert batch.status == "completed" and batch.total == 300
    names, out = read_output(tmp_path / "out.parquet")
    check_columns(names)
    check_rows(rows, out, batch=True)  # results come back in random order: each lands on its own row
    assert all(r["latency_s"] is None for r in out)
    assert all(r["attempts"] == 1 and r["request_id"] for r in out)

    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert (report["mode"], report["batch_requests"], report["batches"], report["batch_results"]) == (
        "batch", 300, 1, 300)
    assert report["requests_sent"] == 0
    full = cost_usd(report["model"], report["input_tokens"], report["output_tokens"])
    assert full and report["estimated_cost_usd"] == pytest.approx(full / 2, rel=1e-3)

    # The same output shape as an online run of the same job.
    online = write_job("in.csv", name="online.toml", task={"prompt": PROMPT},
                       output={"path": "online.parquet"})
    assert run_batch(online, "--base-url", url).returncode == 0
    online_names, online_out = read_output(tmp_path / "online.parquet")
    assert online_names == names
    assert [r["text"] for r in online_out] == [r["text"] for r in out]

    again = run_batch(job, "--base-url", url)  # nothing left to ask: nothing submitted
    assert again.returncode == 0, again.stderr
    assert (sim.uploads, sim.batches_created) == (1, 1)


def test_a_kill_after_submission_and_a_rerun_attaches_to_the_same_batch(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    clock = HeldClock(held=True)  # the batch moves only when the test moves it
    url, sim = start_sim(clock=clock, **FAST, batch_lines_per_s=100)
    rows, job = _rows_and_job(tmp_path, write_job, 300)

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: "batch: submitted" in _stderr(tmp_path, "first"), "the batch to be submitted")
        clock.advance(1.05)  # validated, and about 100 of its 300 lines answered
        _kill(proc)
    finally:
        proc.kill()
    sim.batch_api.refresh()
    (batch,) = sim.batches.values()
    assert batch.status == "in_progress" and 0 < batch.completed < 300

    status = subprocess.run([sys.executable, "-m", "batch", "status", str(job), "--json"], cwd=tmp_path,
                            env=cli_env(None), capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    (shown,) = info["batches"]
    assert shown["batch_id"] == batch.id and not shown["merged"]
    assert info["pending"] == info["in_batches"] == 300
    plan = subprocess.run([sys.executable, "-m", "batch", "plan", str(job), "--json"], cwd=tmp_path,
                          env=cli_env(None), capture_output=True, text=True, timeout=30)
    assert json.loads(plan.stdout)["in_batches"] == 300, plan.stderr  # not counted as still to send

    clock.release()
    again = run_batch(job, "--base-url", url)
    assert again.returncode == 0, again.stderr
    assert f"batch: {batch.id} completed: 300 results merged" in again.stderr, again.stderr
    assert (sim.uploads, sim.batches_created) == (1, 1), "the re-run submitted again"
    assert sim.log == []
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)


class Hold:
    """A simulator middleware that holds one kind of request until the client goes away: `before`
    the simulator handles it (it never happens), or after (it happens, the client never hears)."""

    def __init__(self, method: str, suffix: str, *, before: bool) -> None:
        self.method, self.suffix, self.before = method, suffix, before
        self.active = True
        self.seen = threading.Event()

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (self.active and request.method == self.method and request.path.endswith(self.suffix)):
            return await handler(request)
        response = None if self.before else await handler(request)
        self.seen.set()
        for _ in range(600):  # at most 30 s; a killed client closes the connection much sooner
            if request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.05)
        return response or web.Response(status=503)


def _held_sim(background_loop: BackgroundLoop, hold: Hold) -> tuple[str, Simulator]:
    """A fast simulator whose requests pass through `hold`: (base URL, simulator)."""
    sim = Simulator(SimConfig(rpm=10**6, tpm=10**12, rpd=10**9, tpd=10**15, **FAST))

    @web.middleware
    async def held_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await hold.handle(request, handler)

    sim.app.middlewares.append(held_requests)
    return background_loop.run(sim.start()), sim


def _kill_when_held(hold: Hold, job: Path, url: str, key: str, tmp_path: Path) -> None:
    """Run the job in the background and kill -9 it while `hold` holds its request."""
    proc = _spawn(job, url, key, tmp_path, "first")
    try:
        assert hold.seen.wait(HANG_GUARD_S), _stderr(tmp_path, "first")
        _kill(proc)
    finally:
        proc.kill()


@pytest.mark.parametrize("held", ["batch-create", "upload-answer"])
def test_a_kill_between_upload_and_submission_reuses_the_uploaded_file(
        held: str, tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch,
        api_key: str) -> None:
    # batch-create: killed while submitting (the file id is in the store);
    # upload-answer: killed after Groq stored the file but before its id arrived (found by name).
    hold = (Hold("POST", "/batches", before=True) if held == "batch-create"
            else Hold("POST", "/files", before=False))
    url, sim = _held_sim(background_loop, hold)
    try:
        rows, job = _rows_and_job(tmp_path, write_job, 40)
        _kill_when_held(hold, job, url, api_key, tmp_path)
        assert sim.uploads == 1 and sim.batches_created == 0

        hold.active = False
        again = run_batch(job, "--base-url", url)
        assert again.returncode == 0, again.stderr
        assert (sim.uploads, sim.batches_created) == (1, 1), "the re-run uploaded or submitted twice"
        assert sim.log == []
        check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)
    finally:
        background_loop.run(sim.stop())


def test_expired_requests_wait_for_the_next_run(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    # "24h" lasts 1 s and 50 lines are answered a second: most of 300 lines expire.
    url, sim = start_sim(**FAST, batch_lines_per_s=50, batch_time_scale=86400)
    rows, job = _rows_and_job(tmp_path, write_job, 300)

    first = run_batch(job, "--base-url", url)
    assert first.returncode == 3, first.stderr
    assert "expired" in first.stderr and 'on-expired = "online"' in first.stderr
    assert not (tmp_path / "out.parquet").exists()
    (batch,) = sim.batches.values()
    assert batch.status == "expired" and 0 < batch.completed < 300
    answered = batch.completed

    sim.config.batch_lines_per_s = 100_000  # the next night is quicker
    second = run_batch(job, "--base-url", url)
    assert second.returncode == 0, second.stderr
    assert (sim.uploads, sim.batches_created) == (2, 2)
    newest = max(sim.batches.values(), key=lambda b: b.created)
    assert newest.total == 300 - answered, "the second batch asked again for what was answered"
    assert sim.log == []
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)


def test_expired_requests_go_online_when_the_job_says_so(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST, batch_lines_per_s=50, batch_time_scale=86400)
    rows, job = _rows_and_job(tmp_path, write_job, 200, on_expired="online")

    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    (batch,) = sim.batches.values()
    assert batch.status == "expired"
    assert len(sim.log) == 200 - batch.completed, "online requests other than the expired ones"
    out = read_output(tmp_path / "out.parquet")[1]
    check_rows(rows, out, batch=True)
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert report["requests_sent"] == 200 - batch.completed and report["batch_requests"] == 200


def test_failed_lines_become_row_errors_and_the_next_run_retries_the_transient_ones(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST, batch_fault_rate=0.2, seed=3)
    rows, job = _rows_and_job(tmp_path, write_job, 100)

    first = run_batch(job, "--base-url", url)
    assert first.returncode == 1, first.stderr
    (batch,) = sim.batches.values()
    out = read_output(tmp_path / "out.parquet")[1]
    failed = [r for r in out if r["error"]]
    assert len(failed) == batch.failed > 0
    assert all("500" in r["error"] and r["text"] is None for r in failed)

    sim.config.batch_fault_rate = 0.0
    second = run_batch(job, "--base-url", url)
    assert second.returncode == 0, second.stderr
    assert max(sim.batches.values(), key=lambda b: b.created).total == len(failed)
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)


def test_a_validation_failure_blames_its_lines_and_resubmits_the_rest(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST)
    rows = plain_rows(20)
    rows[7]["experience"] = "far too long " * 50_000  # past the model's context window: a line error
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run=RUN)

    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 1, proc.stderr
    assert "failed validation" in proc.stderr and "context length" in proc.stderr
    first, second = sorted(sim.batches.values(), key=lambda b: b.created)
    assert first.status == "failed" and second.status == "completed" and second.total == 19
    out = read_output(tmp_path / "out.parquet")[1]
    assert out[7]["text"] is None and "Batch API refused" in out[7]["error"]
    check_rows(rows[:7] + rows[8:], out[:7] + out[8:], batch=True)

    again = run_batch(job, "--base-url", url)  # the refusal is permanent: not submitted again
    assert again.returncode == 1 and sim.batches_created == 2


def test_a_model_the_batch_api_refuses_fails_every_row_without_online_requests(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST, batch_models=("openai/gpt-oss-120b",))
    write_csv(plain_rows(5), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run=RUN)
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 1, proc.stderr
    out = read_output(tmp_path / "out.parquet")[1]
    assert all("not available for batch" in r["error"] for r in out)
    assert sim.log == [] and sim.batches_created == 1


def test_no_wait_submits_and_exits_3_then_cancel_and_collect(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    clock = HeldClock(held=True)  # the batch moves only when the test moves it
    url, sim = start_sim(clock=clock, **FAST, batch_lines_per_s=20)
    rows, job = _rows_and_job(tmp_path, write_job, 100)

    first = run_batch(job, "--base-url", url, "--no-wait")
    assert first.returncode == 3, first.stderr
    assert "still running" in first.stderr and "run the same command again" in first.stderr.lower()
    (batch,) = sim.batches.values()

    online = run_batch(job, "--base-url", url, "--mode", "online")  # would pay twice: refused
    assert online.returncode == 2 and "twice" in online.stderr and sim.log == []

    clock.advance(2.55)  # validated, and about 50 of its 100 lines answered
    cancel = subprocess.run([sys.executable, "-m", "batch", "cancel", str(job), "--base-url", url],
                            cwd=tmp_path, env=cli_env(api_key), capture_output=True, text=True, timeout=30)
    assert cancel.returncode == 0, cancel.stderr
    assert batch.id in cancel.stdout and "cancelling" in cancel.stdout

    clock.release()  # for the cancel to finish
    collect = run_batch(job, "--base-url", url)
    assert collect.returncode == 3, collect.stderr  # what the cancel left unanswered is still to ask
    assert batch.status == "cancelled" and 0 < batch.completed < 100
    assert "cancelled" in collect.stderr

    last = run_batch(job, "--base-url", url)
    assert last.returncode == 0, last.stderr
    assert sim.batches_created == 2
    assert max(sim.batches.values(), key=lambda b: b.created).total == 100 - batch.completed
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)


def test_plan_in_batch_mode_counts_the_half_price_and_the_files(tmp_path: Path, write_job: WriteJob) -> None:
    write_csv(plain_rows(10), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run=RUN)
    proc = subprocess.run([sys.executable, "-m", "batch", "plan", str(job), "--json"], cwd=tmp_path,
                          env=cli_env(None), capture_output=True, text=True, timeout=30)
    plan: dict[str, Any] = json.loads(proc.stdout)
    assert plan["mode"] == "batch" and plan["batch_files"] == 1
    assert plan["batch_cost_usd"] == pytest.approx(plan["cost_usd"] / 2)
    text = subprocess.run([sys.executable, "-m", "batch", "plan", str(job)], cwd=tmp_path, env=cli_env(None),
                          capture_output=True, text=True, timeout=30).stdout
    assert "half price" in text and "completion window (24h)" in text


def test_a_refused_submission_ends_the_run_and_the_next_run_starts_clean(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    sim = Simulator(SimConfig(rpm=10**6, tpm=10**12, rpd=10**9, tpd=10**15, **FAST))
    refuse = {"on": True}

    @web.middleware
    async def refuse_batches(request: web.Request, handler: Handler) -> web.StreamResponse:
        if refuse["on"] and request.method == "POST" and request.path.endswith("/batches"):
            return web.json_response({"error": {"message": "completion_window is not supported here",
                                                "type": "invalid_request_error", "code": "invalid_value"}},
                                     status=400)
        return await handler(request)

    sim.app.middlewares.append(refuse_batches)
    url = background_loop.run(sim.start())
    try:
        rows, job = _rows_and_job(tmp_path, write_job, 10)
        first = run_batch(job, "--base-url", url)
        assert first.returncode == 4, first.stderr
        assert "completion_window is not supported here" in first.stderr
        assert sim.uploads == 1 and not [f for f in sim.files.values() if f.purpose == "batch"], \
            "the refused batch's file was left on the server"

        refuse["on"] = False
        second = run_batch(job, "--base-url", url)
        assert second.returncode == 0, second.stderr
        assert (sim.uploads, sim.batches_created) == (2, 1)
        check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)
    finally:
        background_loop.run(sim.stop())


def test_ctrl_c_stops_waiting_and_the_batch_goes_on(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    clock = HeldClock(held=True)  # the batch moves only when the test moves it: it cannot end by itself
    url, sim = start_sim(clock=clock, **FAST, batch_lines_per_s=40)
    rows, job = _rows_and_job(tmp_path, write_job, 120)

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: "batch: submitted" in _stderr(tmp_path, "first"), "the batch to be submitted")
        clock.advance(1.05)  # validated, and about 40 of its 120 lines answered
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)  # the batch is held: only the signal can end the run
    finally:
        proc.kill()
    err = _stderr(tmp_path, "first")
    assert code == 3, err
    assert "still running" in err and "interrupted" in err
    sim.batch_api.refresh()
    (batch,) = sim.batches.values()
    assert batch.status == "in_progress"  # Ctrl-C stops our waiting, not Groq's work

    clock.release()
    again = run_batch(job, "--base-url", url)
    assert again.returncode == 0, again.stderr
    assert (sim.uploads, sim.batches_created) == (1, 1) and sim.log == []
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)


def test_cancel_settles_a_submission_that_never_became_a_batch(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch,
        api_key: str) -> None:
    """Killed between upload and submission, then the user gives up on batch mode: `cancel` deletes the
    uploaded file and gives the requests back, so an online run may send them (it refused before)."""
    hold = Hold("POST", "/batches", before=True)
    url, sim = _held_sim(background_loop, hold)
    try:
        rows, job = _rows_and_job(tmp_path, write_job, 12)
        _kill_when_held(hold, job, url, api_key, tmp_path)
        hold.active = False
        online = run_batch(job, "--base-url", url, "--mode", "online")
        assert online.returncode == 2 and "twice" in online.stderr and sim.log == []

        cancel = subprocess.run([sys.executable, "-m", "batch", "cancel", str(job), "--base-url", url],
                                cwd=tmp_path, env=cli_env(api_key), capture_output=True, text=True,
                                timeout=30)
        assert cancel.returncode == 0, cancel.stderr
        assert "given up before it became a batch" in cancel.stdout
        assert [f for f in sim.files.values() if f.purpose == "batch"] == [], "the uploaded file was left"

        online = run_batch(job, "--base-url", url, "--mode", "online")
        assert online.returncode == 0, online.stderr
        assert sim.batches_created == 0 and len(sim.log) == 12
        check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    finally:
        background_loop.run(sim.stop())
