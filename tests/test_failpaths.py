"""Every failure path ends clean: `python -m batch run` as a subprocess, against the simulator on a real
socket, with outputs and states that cannot be written, disks that fill up, and answers that do not
fit their columns. Each test says what the user sees (exit code, one clear line) and what survives
(every committed answer, the previous output), and that nothing is paid for twice.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nasty import write_csv

from batch.sim import Simulator

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]


def rows(n: int) -> list[dict[str, str | None]]:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"experience number {i}"} for i in range(n)]


# -- an output or state that can never be written is refused before anything is sent ----------------

@pytest.mark.parametrize("key, table, value", [
    ("[output] path", "output", "/proc/batch-out.parquet"),
    ("[output] path", "output", "/proc/self/batch/out.parquet"),
    ("[state] path", "state", "/proc/batch.state.sqlite"),
    ("[state] path", "state", "a-file/state.sqlite"),
    ("[output] path", "output", "deep/" + "n" * 250 + ".parquet"),
])
def test_unwritable_paths_are_refused_before_sending(tmp_path: Path, simulator: tuple[str, Simulator],
                                                     write_job: WriteJob, run_batch: RunBatch,
                                                     key: str, table: str, value: str) -> None:
    url, sim = simulator
    write_csv(rows(3), tmp_path / "in.csv")
    (tmp_path / "a-file").write_text("a file where a folder should be", encoding="utf-8")
    job = write_job("in.csv", **{table: {"path": value}})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert list(sim.log) == [], "requests were sent for a job whose results could not be saved"
    line = next(x for x in proc.stderr.splitlines() if key in x)
    assert value.split("/")[-1][:40] in line, line
    assert not (tmp_path / "deep").exists()
