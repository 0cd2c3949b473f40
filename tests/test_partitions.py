"""Partitioned inputs on one machine: a glob of CSV and JSONL files in, a folder of Parquet parts out
(read back as one table, in partition order, the same columns as a one-file run), a changed partition
re-run alone, and the job-file rules for datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batch.errors import ConfigError
from batch.job.config import parse_job
from batch.sim import Simulator

RunBatch = Callable[..., subprocess.CompletedProcess[str]]


def write_parts(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.csv").write_text("name,experience\nann,cooking\nbob,\"sailing, fishing\"\n")
    (folder / "b.jsonl").write_text('{"name": "cid", "experience": "law"}\n'
                                    '{"name": "dee", "experience": "art"}\n')
    (folder / "_SUCCESS").write_text("")  # not data
    (folder / "notes.txt").write_text("not a table")


def test_a_glob_of_files_becomes_a_folder_of_parts(simulator: tuple[str, Simulator],
                                                   write_job: Callable[..., Path], run_batch: RunBatch,
                                                   tmp_path: Path) -> None:
    url, sim = simulator
    write_parts(tmp_path / "in")
    job = write_job("in/*", api={"base-url": url}, output={"path": None})
    proc = run_batch(job)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_parquet(tmp_path / "in.enriched")
    assert list(out["name"]) == ["ann", "bob", "cid", "dee"]
    assert sorted(p.name for p in (tmp_path / "in.enriched").iterdir()) == ["part-00000.parquet",
                                                                           "part-00001.parquet"]
    assert len(sim.log) == 4
    one = write_job("in/a.csv", name="one.toml", api={"base-url": url}, output={"path": "one.parquet"})
    assert run_batch(one).returncode == 0
    assert list(pd.read_parquet(tmp_path / "one.parquet").columns) == list(out.columns)
    report = json.loads((tmp_path / "in.enriched.report.json").read_text())
    assert report["rows"] == 4 and report["rows_ok"] == 4 and report["status"] == "complete"


def test_a_changed_partition_is_run_again_alone(simulator: tuple[str, Simulator],
                                                write_job: Callable[..., Path], run_batch: RunBatch,
                                                tmp_path: Path) -> None:
    url, sim = simulator
    write_parts(tmp_path / "in")
    job = write_job("in", api={"base-url": url}, output={"path": "out"})
    assert run_batch(job).returncode == 0
    before = (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns
    (tmp_path / "in" / "b.jsonl").write_text('{"name": "cid", "experience": "law"}\n'
                                             '{"name": "eve", "experience": "math"}\n')
    proc = run_batch(job)
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == 5  # only eve is new
    assert (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns == before  # not rewritten
    assert list(pd.read_parquet(tmp_path / "out")["name"]) == ["ann", "bob", "cid", "eve"]
    status = subprocess.run([sys.executable, "-m", "batch", "plan", str(job)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert status.returncode == 2 and "partitioned dataset" in status.stderr
    assert run_batch(job, "--limit", "1").returncode == 2


@pytest.mark.parametrize(("tables", "problem"), [
    ('[output]\npath = "in/out"\n', "inside the input dataset"),
    ('[state]\npath = "s3://bucket/state"\n', "not a URL"),
    ('[run]\ncluster = "somewhere:8786"\n', "[run] cluster"),
])
def test_dataset_rules_in_the_job_file(tmp_path: Path, tables: str, problem: str) -> None:
    (tmp_path / "in").mkdir()
    text = f'[input]\npath = "in"\n[task]\nmodel = "m"\nprompt = "${{x}}"\n{tables}'
    with pytest.raises(ConfigError) as err:
        parse_job(text, tmp_path / "job.toml")
    assert problem in str(err.value)


def test_a_dataset_job_resolves_its_locations(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    text = '[input]\npath = "in/"\n[task]\nmodel = "m"\nprompt = "${x}"\n[run]\ncluster = "local:2"\n'
    job = parse_job(text, tmp_path / "job.toml")
    assert job.input.dataset == str(tmp_path / "in") and job.output.dataset == str(tmp_path / "in.enriched")
    assert job.state.path == tmp_path / "in.enriched.state" and job.run.cluster == "local:2"
    remote = parse_job('[input]\npath = "s3://b/in/"\n[task]\nmodel = "m"\nprompt = "${x}"\n',
                       tmp_path / "job.toml")
    assert remote.input.dataset == "s3://b/in/" and remote.output.dataset == "s3://b/in.enriched"
    assert remote.state.path == tmp_path / "job.state"


def table(ids: list[object], **more: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "name": [f"n{i}" for i in range(len(ids))],
                         "experience": ["x"] * len(ids), **more})


@pytest.mark.parametrize(("odd", "column", "says"), [
    (table(["a7", "b8"]), "id", "is int64 in a.parquet and c.parquet, string in b.parquet."),
    (table([7, 8], note=["p", "q"]), "note", "is in b.parquet but not in a.parquet and c.parquet."),
])
def test_partitions_that_disagree_are_refused(simulator: tuple[str, Simulator],
                                              write_job: Callable[..., Path], run_batch: RunBatch,
                                              tmp_path: Path, odd: pd.DataFrame, column: str,
                                              says: str) -> None:
    # A reader of the output folder takes one part's schema for all: int64 here and string there fails
    # the read; a column only one part has is dropped or not depending on which part it reads first.
    url, sim = simulator
    (tmp_path / "in").mkdir()
    table([1, 2]).to_parquet(tmp_path / "in" / "a.parquet")
    odd.to_parquet(tmp_path / "in" / "b.parquet")
    table([5, 6]).to_parquet(tmp_path / "in" / "c.parquet")
    job = write_job("in", api={"base-url": url}, output={"path": "out"})
    proc = run_batch(job)
    assert proc.returncode == 2, proc.stderr
    assert f"Column '{column}' {says}" in proc.stderr
    assert sim.log == [] and not (tmp_path / "out").exists()


def test_a_new_partition_must_agree_with_the_parts_written(simulator: tuple[str, Simulator],
                                                           write_job: Callable[..., Path],
                                                           run_batch: RunBatch, tmp_path: Path) -> None:
    url, sim = simulator
    (tmp_path / "in").mkdir()
    table([1, 2]).to_parquet(tmp_path / "in" / "a.parquet")
    job = write_job("in", api={"base-url": url}, output={"path": "out"})
    assert run_batch(job).returncode == 0
    table([3], note=["p"]).to_parquet(tmp_path / "in" / "b.parquet")  # the part written has no `note`
    proc = run_batch(job)
    assert proc.returncode == 2, proc.stderr
    assert "Column 'note' is in b.parquet but not in a.parquet." in proc.stderr
    assert len(sim.log) == 2 and len(pd.read_parquet(tmp_path / "out")) == 2
