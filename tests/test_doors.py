"""What every door shares: a simulated run never leaves answers that a real run would take for Groq's."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import REPO

from batch.sim import Simulator

RunBatch = Callable[..., subprocess.CompletedProcess[str]]


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

    real = run_batch(job, "--base-url", url)  # the job's own store: nothing of the simulated run in it

    assert real.returncode == 0, real.stderr
    assert sum(1 for e in sim.log if e.status == 200) == 48
