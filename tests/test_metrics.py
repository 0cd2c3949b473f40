"""The metrics textfile (`--metrics-file`, `[run] metrics-file`), read back as Prometheus reads it.

Every end of a run leaves a file node_exporter's textfile collector can serve: its counts equal the
run report's figures, its exit code is the command's, and the last success time survives every run
that did not succeed (failed rows, a spent daily quota, an interrupt, a refused job). During a run the
file counts what is answered so far, also for a partitioned input and a cluster run (parts finished,
and the rows of those under way).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from conftest import HANG_GUARD_S, MODEL, BackgroundLoop, LocalServer, cli_env, completion, wait_until
from nasty import write_csv
from prometheus_client.parser import text_string_to_metric_families

import batch
from batch.dataset.local import PartitionedRun
from batch.engine import drive as driving
from batch.engine.drive import Runner
from batch.engine.run import RunOptions
from batch.job import endpoint
from batch.job.config import Job, load_job
from batch.job.endpoint import Endpoint
from batch.report.metrics import MetricsFile
from batch.sim import Simulator

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

PROMPT = "Rewrite for ${name}:\n${experience}"
NAMES = {"batch_rows_total", "batch_requests_total", "batch_http_429_total", "batch_tokens_total",
         "batch_cost_usd_total", "batch_run_duration_seconds", "batch_last_run_exit_code",
         "batch_last_run_timestamp_seconds", "batch_last_success_timestamp_seconds"}


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"metrics experience number {i}"}
            for i in range(n)]


def read_metrics(path: Path) -> Samples:
    """Every sample of the file by (name, labels), parsed by Prometheus's own parser; each family has
    its HELP and TYPE, and every sample the job label."""
    samples: Samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge"), family
        for s in family.samples:
            assert s.labels.get("job") == "job", s
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "job"))
            samples[(s.name, labels)] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    return data


def assert_matches_report(m: Samples, r: dict[str, Any]) -> None:
    """The counts are the report's: rows by outcome partition the output's rows."""
    earlier_ok = r["rows_from_store"] - r["rows_from_store_failed"]
    assert value(m, "batch_rows_total", outcome="answered") == r["rows_ok"] - earlier_ok
    assert value(m, "batch_rows_total", outcome="failed") == r["rows_failed"] - r["rows_from_store_failed"]
    assert value(m, "batch_rows_total", outcome="from_store") == r["rows_from_store"]
    assert value(m, "batch_requests_total") == r["requests_sent"]
    assert value(m, "batch_http_429_total") == r["rate_limited_429"]
    for kind in ("input", "output", "cached"):
        assert value(m, "batch_tokens_total", kind=kind) == r[f"{kind}_tokens"]
    assert value(m, "batch_cost_usd_total") == pytest.approx(r["estimated_cost_usd"])
    assert value(m, "batch_run_duration_seconds") >= 0


@pytest.fixture
def metrics_job(tmp_path: Path, write_job: WriteJob) -> Callable[..., Path]:
    """A job over `n` plain rows whose metrics file is `metrics/job.prom`, beside the job file."""
    (tmp_path / "metrics").mkdir()

    def make(n: int, **limits: Any) -> Path:
        write_csv(rows(n), tmp_path / "in.csv")
        return write_job("in.csv", task={"prompt": PROMPT}, limits=limits,
                         run={"metrics-file": "metrics/job.prom"})

    return make


def test_ok_run_counts_equal_the_report_and_mark_a_success(tmp_path: Path, simulator: tuple[str, Simulator],
                                                           metrics_job: Callable[..., Path],
                                                           run_batch: RunBatch) -> None:
    url, _ = simulator
    proc = run_batch(metrics_job(12), "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert names(m) == NAMES
    r = report(tmp_path)
    assert_matches_report(m, r)
    assert value(m, "batch_rows_total", outcome="answered") == 12 and r["requests_sent"] == 12
    assert value(m, "batch_last_run_exit_code") == 0
    assert value(m, "batch_last_success_timestamp_seconds") == value(m, "batch_last_run_timestamp_seconds")
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["job.prom"], "a temporary file was left"


def test_failed_rows_exit_1_and_are_no_success(tmp_path: Path, start_sim: StartSim,
                                               metrics_job: Callable[..., Path], run_batch: RunBatch) -> None:
    url, sim = start_sim(fault_rate=1.0, faults=("500", "503"))
    job = metrics_job(6, **{"max-attempts": 2})

    first = run_batch(job, "--base-url", url)

    assert first.returncode == 1, first.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert_matches_report(m, report(tmp_path))
    assert value(m, "batch_rows_total", outcome="failed") == 6
    assert value(m, "batch_rows_total", outcome="answered") == 0
    assert value(m, "batch_requests_total") == 12
    assert value(m, "batch_last_run_exit_code") == 1
    assert "batch_last_success_timestamp_seconds" not in names(m), "no run of this job has succeeded yet"

    sim.config.fault_rate = 0.0
    second = run_batch(job, "--base-url", url)  # the transient failures are sent again

    assert second.returncode == 0, second.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert_matches_report(m, report(tmp_path))
    assert value(m, "batch_rows_total", outcome="answered") == 6
    assert value(m, "batch_rows_total", outcome="failed") == 0
    assert value(m, "batch_last_run_exit_code") == 0


def test_daily_quota_stop_exits_3_and_keeps_the_last_success(tmp_path: Path, start_sim: StartSim,
                                                             metrics_job: Callable[..., Path],
                                                             run_batch: RunBatch) -> None:
    url, _ = start_sim(rpd=6)
    job = metrics_job(10)
    ok = run_batch(job, "--base-url", url, "--limit", "3")
    assert ok.returncode == 0, ok.stderr
    success = value(read_metrics(tmp_path / "metrics" / "job.prom"), "batch_last_success_timestamp_seconds")

    stopped = run_batch(job, "--base-url", url)

    assert stopped.returncode == 3, stopped.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert value(m, "batch_last_run_exit_code") == 3
    assert value(m, "batch_last_success_timestamp_seconds") == success
    assert value(m, "batch_last_run_timestamp_seconds") > success
    r = report(tmp_path)  # a stopped run's report tells what it did
    assert r["status"] == "stopped"
    assert_matches_report(m, r)
    assert value(m, "batch_rows_total", outcome="answered") == 3  # the quota's other 3 requests
    assert value(m, "batch_http_429_total") >= 1


def test_rerun_counts_every_row_from_the_store(tmp_path: Path, simulator: tuple[str, Simulator],
                                               metrics_job: Callable[..., Path], run_batch: RunBatch) -> None:
    url, _ = simulator
    job = metrics_job(8)
    assert run_batch(job, "--base-url", url).returncode == 0
    first = read_metrics(tmp_path / "metrics" / "job.prom")

    again = run_batch(job, "--base-url", url)

    assert again.returncode == 0, again.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert_matches_report(m, report(tmp_path))
    assert value(m, "batch_rows_total", outcome="from_store") == 8
    assert value(m, "batch_rows_total", outcome="answered") == 0
    assert value(m, "batch_requests_total") == 0 and value(m, "batch_cost_usd_total") == 0
    assert value(m, "batch_tokens_total", kind="input") == 0
    assert value(m, "batch_last_success_timestamp_seconds") >= value(
        first, "batch_last_success_timestamp_seconds")


def test_refused_job_records_exit_2_and_keeps_the_last_success(
        tmp_path: Path, simulator: tuple[str, Simulator], metrics_job: Callable[..., Path],
        run_batch: RunBatch) -> None:
    url, _ = simulator
    job = metrics_job(4)
    assert run_batch(job, "--base-url", url).returncode == 0
    success = value(read_metrics(tmp_path / "metrics" / "job.prom"), "batch_last_success_timestamp_seconds")
    job.write_text(job.read_text(encoding="utf-8").replace("[task]", "[task]\ntemperature = 9"),
                   encoding="utf-8")

    refused = run_batch(job, "--base-url", url)

    assert refused.returncode == 2, refused.stderr
    assert "temperature" in refused.stderr
    m = read_metrics(tmp_path / "metrics" / "job.prom")
    assert value(m, "batch_last_run_exit_code") == 2
    assert value(m, "batch_last_success_timestamp_seconds") == success
    assert value(m, "batch_requests_total") == 0 and value(m, "batch_rows_total", outcome="answered") == 0


def test_a_job_that_is_not_even_toml_is_recorded_where_the_flag_says(tmp_path: Path,
                                                                     run_batch: RunBatch) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[input\npath = ", encoding="utf-8")

    refused = run_batch(job, "--metrics-file", "flagged.prom")
    unrecorded = run_batch(job)  # no path to be read anywhere: nothing is written

    assert refused.returncode == 2 and unrecorded.returncode == 2
    m = read_metrics(tmp_path / "flagged.prom")
    assert value(m, "batch_last_run_exit_code") == 2
    assert "batch_last_success_timestamp_seconds" not in names(m)
    assert sorted(p.name for p in tmp_path.glob("*.prom")) == ["flagged.prom"]


def test_the_file_is_there_during_the_run_and_an_interrupt_exits_3(
        tmp_path: Path, start_sim: StartSim, metrics_job: Callable[..., Path], api_key: str) -> None:
    url, sim = start_sim(latency_ms=600_000)  # requests on the wire never end: only signals stop the run
    job = metrics_job(20, concurrency=4, **{"request-timeout": 900})
    prom = tmp_path / "metrics" / "job.prom"
    prom.write_text('batch_last_run_exit_code{job="job"} 0\n'  # an earlier run's ending
                    'batch_last_run_timestamp_seconds{job="job"} 1700000000\n'
                    'batch_last_success_timestamp_seconds{job="job"} 1700000000\n', encoding="utf-8")

    with (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                                env=cli_env(api_key), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: sim.in_flight == 4 and "batch_requests_total" in prom.read_text(encoding="utf-8"),
                   "requests on the wire and the run's file")
        during = read_metrics(prom)
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "finishing the requests in flight" in (tmp_path / "run.err").read_text(), "signal")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()

    assert code == 3, (tmp_path / "run.err").read_text()
    # During the run, the last run's ending is carried over: an alert on it does not flap.
    assert value(during, "batch_last_run_exit_code") == 0
    assert value(during, "batch_last_success_timestamp_seconds") == 1_700_000_000
    assert value(during, "batch_rows_total", outcome="answered") == 0
    after = read_metrics(prom)
    assert value(after, "batch_last_run_exit_code") == 3
    assert value(after, "batch_last_success_timestamp_seconds") == 1_700_000_000
    assert value(after, "batch_last_run_timestamp_seconds") > 1_700_000_000


def test_python_door_without_a_job_file_is_labelled_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_metrics_door_0123456789")
    prom = tmp_path / "door.prom"
    options = {"model": MODEL, "prompt": "Say ${body}", "base_url": url, "progress": False,
               "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000, "metrics_file": prom}

    def families() -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(prom.read_text(encoding="utf-8"))}

    out = batch.run(pd.DataFrame({"body": ["a", "b", "c"]}), **options)

    assert out.attrs["batch"]["rows_ok"] == 3
    ok = families()
    answered = [s for s in ok["batch_rows"].samples if s.labels.get("outcome") == "answered"]
    assert [(s.labels["job"], s.value) for s in answered] == [("python", 3)]
    success = ok["batch_last_success_timestamp_seconds"].samples[0].value

    with pytest.raises(ValueError, match="temperature"):  # a refused call (JobError) is recorded too
        batch.run(pd.DataFrame({"body": ["a"]}), **options, temperature=9)

    refused = families()
    assert refused["batch_last_run_exit_code"].samples[0].value == 2
    assert refused["batch_last_success_timestamp_seconds"].samples[0].value == success


class Holding(LocalServer):
    """Answers the first `answers` chat requests at once; the later ones are held until `release`
    (then answered too): a run that has answered exactly `answers` rows and goes on."""

    def __init__(self, answers: int) -> None:
        super().__init__()
        self.left = answers
        self.release = asyncio.Event()

    async def chat(self, request: web.Request) -> web.Response:
        if self.left > 0:
            self.left -= 1
        else:
            await self.release.wait()
        return completion("ok")


@pytest.fixture
def holding(background_loop: BackgroundLoop) -> Iterator[Callable[[int], str]]:
    """`holding(answers)`: a Holding server's base URL; every held request is let go at teardown."""
    servers: list[Holding] = []

    def start(answers: int) -> str:
        servers.append(server := Holding(answers))
        return background_loop.run(server.start())

    yield start
    for server in servers:
        background_loop.loop.call_soon_threadsafe(server.release.set)


def write_parts(folder: Path, parts: int, rows: int) -> None:
    folder.mkdir()
    for p in range(parts):
        ids = [f"p{p}-{i}" for i in range(rows)]
        pd.DataFrame({"name": ids, "experience": [f"metrics experience {x}" for x in ids]}).to_parquet(
            folder / f"in-{p}.parquet")


def drive_in_loop(background_loop: BackgroundLoop, runner: Callable[[Job, Endpoint], Runner], job: Path,
                  url: str, prom: Path) -> Callable[[], None]:
    """`drive(runner, metrics=...)` on the background loop, as a door runs it (in this process, so that
    the test can make the file's interval short); returns the caller's stop (a cancel: exit 3)."""
    async def main() -> None:
        loaded = load_job(job)
        ep = endpoint.resolve(loaded, url, {"GROQ_API_KEY": "gsk_test_metrics_in_run_0123456789"})
        await driving.drive(runner(loaded, ep), metrics=MetricsFile(prom, "job"))

    future = asyncio.run_coroutine_threadsafe(main(), background_loop.loop)

    def stop() -> None:
        background_loop.loop.call_soon_threadsafe(future.cancel)

    return stop


def answered_so_far(prom: Path, n: int) -> bool:
    """The file says `n` rows answered, the run still going (no exit code: no earlier run)."""
    if not prom.exists():
        return False
    m = read_metrics(prom)
    return (value(m, "batch_rows_total", outcome="answered") == n
            and "batch_last_run_exit_code" not in names(m))


def test_a_partitioned_run_counts_its_parts_during_the_run(
        tmp_path: Path, background_loop: BackgroundLoop, holding: Callable[[int], str],
        write_job: WriteJob, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three parts of 4 rows, and a server that answers 6 requests and holds the rest: the first part
    # is done, the second is under way with 2 answers, the third not started. The file during the run
    # says 6 answered (the finished part's rows and the running part's), and so does the stopped run's.
    monkeypatch.setattr(driving, "METRICS_EVERY_S", 0.02)
    write_parts(tmp_path / "in", parts=3, rows=4)
    job = write_job("in", task={"prompt": PROMPT}, output={"path": "out"})
    prom = tmp_path / "job.prom"

    stop = drive_in_loop(background_loop, lambda j, ep: PartitionedRun(j, ep, RunOptions(progress=False)),
                         job, holding(6), prom)
    try:
        wait_until(lambda: answered_so_far(prom, 6), "6 rows answered in the file during the run")
        during = read_metrics(prom)
        assert value(during, "batch_requests_total") == 8  # the second part's 2 held requests too
        assert value(during, "batch_rows_total", outcome="failed") == 0
        assert value(during, "batch_tokens_total", kind="input") == 6 * 7  # `completion`: 7 in, 3 out
        assert value(during, "batch_tokens_total", kind="output") == 6 * 3
    finally:
        stop()
    wait_until(lambda: "batch_last_run_exit_code" in prom.read_text(encoding="utf-8"), "the run's end")
    after = read_metrics(prom)
    assert value(after, "batch_last_run_exit_code") == 3
    assert value(after, "batch_rows_total", outcome="answered") == 6
    assert value(after, "batch_requests_total") == 8
    assert "batch_last_success_timestamp_seconds" not in names(after)
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))  # it agrees
    assert report["status"] == "stopped" and report["rows_ok"] == 6 and report["requests_sent"] == 8


def test_a_cluster_run_counts_its_workers_parts_during_the_run(
        tmp_path: Path, background_loop: BackgroundLoop, holding: Callable[[int], str],
        write_job: WriteJob, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two workers, three parts of 4 rows, a server that answers 6 requests: the client's file adds up
    # the parts finished and what the workers said of the parts under way.
    pytest.importorskip("distributed")
    from clusterkit import local_cluster

    from batch.cluster import runner as cluster_runner

    monkeypatch.setattr(driving, "METRICS_EVERY_S", 0.02)
    monkeypatch.setattr(cluster_runner, "NEWS_EVERY_S", 0.05)  # the workers' news, and its reading
    write_parts(tmp_path / "in", parts=3, rows=4)
    job = write_job("in", task={"prompt": PROMPT}, output={"path": "out"})
    prom = tmp_path / "job.prom"

    with local_cluster(2) as (cluster, _):
        stop = drive_in_loop(background_loop, lambda j, ep: cluster_runner.ClusterRun(
            j, ep, RunOptions(progress=False), cluster.scheduler_address), job, holding(6), prom)
        try:
            wait_until(lambda: answered_so_far(prom, 6), "6 rows answered in the file during the run")
            during = read_metrics(prom)
            assert value(during, "batch_tokens_total", kind="output") == 6 * 3
            assert value(during, "batch_requests_total") >= 6
        finally:
            stop()
        wait_until(lambda: "batch_last_run_exit_code" in prom.read_text(encoding="utf-8"), "the run's end")
    assert value(read_metrics(prom), "batch_last_run_exit_code") == 3
