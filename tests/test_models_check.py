"""The models check before sending, and `python -m batch models --simulate`."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import REPO, BackgroundLoop, LocalServer, cli_env, completion
from nasty import write_csv

from batch.engine.preflight import check_model
from batch.errors import FatalApiError, JobError
from batch.job.config import Job, load_job
from batch.sim import Simulator

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
StartSim = Callable[..., tuple[str, Simulator]]
ROWS = [{"id": str(i), "name": f"n{i}", "experience": f"e{i}"} for i in range(3)]


class NoModels(LocalServer):
    """A chat-only server at /v1 (like some local servers): GET /models is a 404."""

    def __init__(self) -> None:
        self.chats = 0
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.chats += 1
        return completion("ok", model=body["model"])


def test_a_server_without_models_is_not_checked(tmp_path: Path, background_loop: BackgroundLoop,
                                                write_job: WriteJob, run_batch: RunBatch) -> None:
    server = NoModels()
    url = background_loop.run(server.start())
    write_csv(ROWS, tmp_path / "in.csv")
    try:
        proc = run_batch(write_job("in.csv", task={"model": "local-model"}), "--base-url", url)
    finally:
        background_loop.run(server.runner.cleanup())
    assert proc.returncode == 0, proc.stderr
    assert "models check skipped" in proc.stderr and server.chats == 3


def test_a_served_model_passes_and_runs(tmp_path: Path, simulator: tuple[str, Simulator],
                                        write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(ROWS, tmp_path / "in.csv")
    proc = run_batch(write_job("in.csv"), "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == 3


def _job(tmp_path: Path, write_job: WriteJob, model: str) -> Job:
    write_csv(ROWS, tmp_path / "in.csv")
    return load_job(write_job("in.csv", task={"model": model}))


def test_a_decommissioned_model_is_named_with_its_replacement(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob) -> None:
    url, sim = simulator
    job = _job(tmp_path, write_job, "openai/gpt-oss-20b")
    # check_job refuses a decommissioned model even earlier; here the models list is what says it.
    gone = dataclasses.replace(job, task=dataclasses.replace(job.task, model="llama-3.3-70b-versatile"))
    with pytest.raises(JobError) as info:
        asyncio.run(check_model(gone, url, "gsk_x"))
    assert "llama-3.3-70b-versatile" in str(info.value) and "openai/gpt-oss-120b" in str(info.value)
    assert info.value.exit_code == 2
    asyncio.run(check_model(job, url, "gsk_x"))  # a served model passes
    assert sim.log == []


def test_a_refused_key_is_fatal(tmp_path: Path, start_sim: StartSim, write_job: WriteJob) -> None:
    url, sim = start_sim(api_key="right")
    job = _job(tmp_path, write_job, "openai/gpt-oss-20b")
    with pytest.raises(FatalApiError) as info:
        asyncio.run(check_model(job, url, "wrong"))
    assert info.value.status == 401 and info.value.exit_code == 4
    assert sim.log == []


def test_models_simulate_lists_context_windows() -> None:
    proc = subprocess.run([sys.executable, "-m", "batch", "models", "--simulate"], cwd=REPO,
                          env=cli_env(None), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("openai/gpt-oss-20b\tcontext 131,072") for line in lines), proc.stdout
