"""Cluster runs against real Dask processes on 127.0.0.1 (a scheduler and two worker processes, shared
by the module) and the simulator: one rate limit for the whole cluster, a worker killed mid-run (no
answer lost, and what it bought counted in the report), the client killed and the run resumed, a
signal that stops the run, a re-run that sends nothing, and the refusals before anything is sent.
The command line runs as a subprocess against the module's scheduler (`--cluster tcp://...`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from clusterkit import answered, busiest_window, local_cluster, make_parts, refused, wait_for
from conftest import cli_env
from distributed import Client

from batch.sim import Simulator

pytest.importorskip("distributed")

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def dask() -> Iterator[tuple[str, Client]]:
    with local_cluster(2) as (cluster, client):
        yield cluster.scheduler_address, client


def worker_tasks(dask_worker: Any) -> str:
    """Every task a worker holds: its key and its spec with the arguments (run on each worker)."""
    specs = ((key, ts.run_spec) for key, ts in dask_worker.state.tasks.items())
    return "\n".join(f"{key!s} {spec!r} {getattr(spec, 'args', ())!r} {getattr(spec, 'kwargs', {})!r}"
                     for key, spec in specs)


def job_for(write_job: Callable[..., Path], folder: Path, url: str, **tables: dict[str, Any]) -> Path:
    limits = {"concurrency": 4, **tables.pop("limits", {})}
    return write_job(folder, api={"base-url": url}, output={"path": "out"}, limits=limits, **tables)


def outputs(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out")


def test_one_limit_for_the_whole_cluster(dask: tuple[str, Client], start_sim: StartSim, api_key: str,
                                         write_job: Callable[..., Path], run_batch: RunBatch,
                                         tmp_path: Path) -> None:
    # The server allows 1200 requests a minute with a 3 s burst; each worker pacing itself at the
    # job's 1200/min would send twice that together and collect 429s once the burst is spent. One
    # budget for the cluster keeps the two workers, together, at the limit.
    url, sim = start_sim(rpm=1200, burst_s=3.0, api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=4, rows=40)
    job = job_for(write_job, tmp_path / "in", url, limits={"requests-per-minute": 1200, "concurrency": 8})
    proc = run_batch(job, "--cluster", dask[0])
    assert proc.returncode == 0, proc.stderr
    out = outputs(tmp_path)
    assert len(out) == rows and out["error"].isna().all()
    assert list(out["name"]) == [f"r{p}-{i}" for p in range(4) for i in range(40)]  # partition order
    assert refused(sim) == 0
    assert sum(answered(sim).values()) == rows
    # Within any second: a second of rate on top of the budget's burst (2 s), never the sum of two.
    assert busiest_window(sim, 1.0) <= 20 + 40 + 1
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["rows"] == rows and report["requests_sent"] == rows and report["rate_limited_429"] == 0


def test_a_rerun_sends_nothing(dask: tuple[str, Client], start_sim: StartSim, api_key: str,
                               write_job: Callable[..., Path], run_batch: RunBatch, tmp_path: Path) -> None:
    url, sim = start_sim(api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=3, rows=5)
    job = job_for(write_job, tmp_path / "in", url)
    assert run_batch(job, "--cluster", dask[0]).returncode == 0
    sent = len(sim.log)
    assert sent == rows
    proc = run_batch(job, "--cluster", dask[0])
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == sent
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["rows"] == rows and report["rows_from_store"] == rows and report["requests_sent"] == 0
    # One machine, the same partitioned job: the same parts, nothing sent either.
    proc = run_batch(job)
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == sent and len(outputs(tmp_path)) == rows


def test_a_worker_killed_mid_run_loses_no_answer(dask: tuple[str, Client], start_sim: StartSim,
                                                 api_key: str, write_job: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    url, sim = start_sim(latency_ms=150, api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=2, rows=30)
    job = job_for(write_job, tmp_path / "in", url)
    address, client = dask
    proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--cluster", address],
                            env=cli_env(api_key), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(sim.log) >= 12, "the first answers")
        graph = "\n".join(client.run(worker_tasks).values())
        assert str(job) in graph  # the tasks carry the job...
        assert api_key not in graph  # ...but not the key: not in a task, its name or its arguments
        busy = [w for w, keys in client.processing().items() if keys]  # type: ignore[no-untyped-call]
        pids = client.run(os.getpid)
        os.kill(pids[busy[0]], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    client.wait_for_workers(2, timeout=30)  # the nanny restarts it, for the next test
    assert proc.returncode == 0, err
    assert api_key not in err
    out = outputs(tmp_path)
    assert len(out) == rows and out["error"].isna().all()
    counts = answered(sim)
    assert len(counts) == rows
    paid = sum(counts.values())
    assert paid - rows <= 4  # at most the killed worker's requests in flight, again
    # The report counts what this run paid: the killed worker's committed answers were bought by this
    # run, not found in the store (only the answers it had on the wire left no trace anywhere).
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["rows_from_store"] == 0 and report["rows_ok"] == rows
    assert paid - 4 <= report["requests_sent"] <= paid
    assert sum(e.tokens for e in sim.log) - report["input_tokens"] - report["output_tokens"] <= \
        4 * max(e.tokens for e in sim.log)


def test_the_client_killed_then_the_run_resumes(dask: tuple[str, Client], start_sim: StartSim,
                                                api_key: str, write_job: Callable[..., Path],
                                                run_batch: RunBatch, tmp_path: Path) -> None:
    url, sim = start_sim(latency_ms=100, api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=4, rows=15)
    job = job_for(write_job, tmp_path / "in", url)
    proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--cluster", dask[0]],
                            env=cli_env(api_key), cwd=tmp_path, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(sim.log) >= 6, "the first answers")
    proc.kill()
    proc.wait(10)
    again = run_batch(job, "--cluster", dask[0], timeout=90)
    assert again.returncode == 0, again.stderr
    out = outputs(tmp_path)
    assert len(out) == rows and out["error"].isna().all()
    counts = answered(sim)
    assert len(counts) == rows and max(counts.values()) == 1  # nothing paid twice


def test_refusals_before_anything_is_sent(dask: tuple[str, Client], simulator: tuple[str, Simulator],
                                          write_job: Callable[..., Path], run_batch: RunBatch,
                                          tmp_path: Path) -> None:
    url, sim = simulator
    make_parts(tmp_path / "in", parts=2, rows=3)
    job = job_for(write_job, tmp_path / "in", url)
    nowhere = run_batch(job, "--cluster", "tcp://127.0.0.1:9")  # nothing listens on the discard port
    assert nowhere.returncode == 2 and "cannot reach the Dask scheduler" in nowhere.stderr
    bad = run_batch(job, "--cluster", "somewhere")
    assert bad.returncode == 2 and "--cluster" in bad.stderr
    one_file = write_job(tmp_path / "in" / "in-000.parquet", name="one.toml", api={"base-url": url})
    single = run_batch(one_file, "--cluster", dask[0])
    assert single.returncode == 2 and "partitioned input" in single.stderr
    pd.DataFrame({"name": [1], "experience": ["x"]}).to_parquet(tmp_path / "in" / "in-001.parquet")
    disagree = run_batch(job, "--cluster", dask[0])
    assert disagree.returncode == 2
    assert "Column 'name' is string in in-000.parquet, int64 in in-001.parquet." in disagree.stderr
    (tmp_path / "in" / "in-001.parquet").write_text("not parquet")
    broken = run_batch(job, "--cluster", dask[0])
    assert broken.returncode == 2 and "in-001.parquet" in broken.stderr
    assert sim.log == []


def test_a_worker_without_batch_is_refused(simulator: tuple[str, Simulator], write_job: Callable[..., Path],
                                           run_batch: RunBatch, tmp_path: Path) -> None:
    # A worker where `import batch` fails, as on a machine where it was never installed.
    preload = tmp_path / "nobatch.py"
    preload.write_text("import sys\nsys.modules['batch'] = None\n")
    url, sim = simulator
    make_parts(tmp_path / "in", parts=2, rows=3)
    job = job_for(write_job, tmp_path / "in", url)
    with local_cluster(1, preload=[str(preload)]) as (cluster, _):
        proc = run_batch(job, "--cluster", cluster.scheduler_address)
    assert proc.returncode == 2 and "cannot import batch" in proc.stderr
    assert sim.log == []


def test_a_daily_quota_stops_every_worker(dask: tuple[str, Client], start_sim: StartSim, api_key: str,
                                          write_job: Callable[..., Path], run_batch: RunBatch,
                                          tmp_path: Path) -> None:
    url, sim = start_sim(rpd=12, latency_ms=20, api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=4, rows=10)
    job = job_for(write_job, tmp_path / "in", url)
    proc = run_batch(job, "--cluster", dask[0])
    assert proc.returncode == 3, proc.stderr
    assert "requests per day" in proc.stderr
    assert sum(answered(sim).values()) == 12
    assert refused(sim) <= 2 * 4  # at most what each worker had in flight: no storm
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["status"] == "stopped"
    sim.config.rpd = 1000  # the quota resets: the next run finishes, paying nothing twice
    again = run_batch(job, "--cluster", dask[0])
    assert again.returncode == 0, again.stderr
    assert len(outputs(tmp_path)) == rows and max(answered(sim).values()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_cluster_run(dask: tuple[str, Client], start_sim: StartSim, api_key: str,
                                        write_job: Callable[..., Path], run_batch: RunBatch,
                                        tmp_path: Path, sig: signal.Signals) -> None:
    # One Ctrl-C, or one SIGTERM (a scheduler's stop), while answers come in: exit 3, then it resumes.
    url, sim = start_sim(latency_ms=100, api_key=api_key)
    rows = make_parts(tmp_path / "in", parts=4, rows=15)
    job = job_for(write_job, tmp_path / "in", url)
    proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--cluster", dask[0]],
                            env=cli_env(api_key), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(sim.log) >= 6, "the first answers")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert len(sim.log) < rows
    again = run_batch(job, "--cluster", dask[0])
    assert again.returncode == 0, again.stderr
    assert len(outputs(tmp_path)) == rows and max(answered(sim).values()) == 1


def test_a_local_cluster_of_its_own(write_job: Callable[..., Path], run_batch: RunBatch,
                                    tmp_path: Path) -> None:
    # `--cluster local:2` starts (and stops) two worker processes on 127.0.0.1 for the run.
    rows = make_parts(tmp_path / "in", parts=3, rows=4)
    job = write_job(tmp_path / "in", output={"path": "out"}, run={"cluster": "local:2"})
    proc = run_batch(job, "--simulate")
    assert proc.returncode == 0, proc.stderr
    assert "on 2 workers" in proc.stderr
    assert len(outputs(tmp_path)) == rows


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not can_unshare(), reason="needs unshare -m (a mount namespace) to give a worker "
                                              "a filesystem of its own")
def test_a_state_folder_a_worker_does_not_see_is_refused(simulator: tuple[str, Simulator],
                                                         write_job: Callable[..., Path],
                                                         run_batch: RunBatch, tmp_path: Path) -> None:
    # A worker in a mount namespace of its own, where the state folder is an empty tmpfs: the same
    # path, another filesystem, as on a machine that does not share it.
    url, sim = simulator
    make_parts(tmp_path / "in", parts=2, rows=3)
    state = tmp_path / "state"
    state.mkdir()
    job = job_for(write_job, tmp_path / "in", url, state={"path": str(state)})
    with local_cluster(0) as (cluster, client):
        worker = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{state}" && exec "{sys.executable}" -m '
             f'distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 --host 127.0.0.1 '
             '--no-dashboard --no-nanny'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=30)
            proc = run_batch(job, "--cluster", cluster.scheduler_address)
        finally:
            worker.terminate()
            worker.wait(10)
    assert proc.returncode == 2, proc.stderr
    assert "do not see" in proc.stderr and str(state) in proc.stderr
    assert sim.log == []
