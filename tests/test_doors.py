"""What every door shares: a simulated run never leaves answers that a real run would take for Groq's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import REPO, cli_env

from batch.sim import Simulator

RunBatch = Callable[..., subprocess.CompletedProcess[str]]


def cli(job: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch", command, str(job), *args], capture_output=True,
                          text=True, env=cli_env(None), timeout=120, check=False)


def test_a_simulated_run_keeps_its_answers_apart(tmp_path: Path, run_batch: RunBatch,
                                                 simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    for folder in ("jobs", "data"):
        (tmp_path / folder).mkdir()
    shutil.copy(REPO / "jobs" / "resumes.toml", tmp_path / "jobs" / "resumes.toml")
    shutil.copy(REPO / "data" / "resumes.csv", tmp_path / "data" / "resumes.csv")
    job = tmp_path / "jobs" / "resumes.toml"
    text = job.read_text(encoding="utf-8")  # the sample job, paced for a test rather than a base tier
    job.write_text(text.replace("requests-per-minute = 30", "requests-per-minute = 600000")
                   .replace("tokens-per-minute = 8000", "tokens-per-minute = 100000000"), encoding="utf-8")

    assert run_batch(job, "--simulate", key=None).returncode == 0
    assert (tmp_path / "data" / "resumes.enriched.parquet.state.simulated.sqlite").exists()
    assert not (tmp_path / "data" / "resumes.enriched.parquet.state.sqlite").exists()
    # A new user's next look finds them: status says where, and --simulate shows them.
    shown = cli(job, "status")
    assert shown.returncode == 0 and "48 pending" in shown.stdout and "add --simulate" in shown.stdout
    assert "48 answered" in cli(job, "status", "--simulate").stdout
    assert "add --simulate" in cli(job, "report").stderr
    assert cli(job, "report", "--simulate").returncode == 0

    real = run_batch(job, "--base-url", url)  # the job's own store: nothing of the simulated run in it

    assert real.returncode == 0, real.stderr
    assert sum(1 for e in sim.log if e.status == 200) == 48
