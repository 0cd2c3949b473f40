"""Data on S3: a partitioned input read from, and the parts written to, a real S3 server on 127.0.0.1
(moto in server mode), through fsspec/s3fs with the endpoint and credentials from the standard
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), on a cluster of real Dask worker processes and
on one machine; a missing bucket or prefix is refused before anything is sent, a later partition
whose columns differ from the first is refused and not written, and an endpoint that never answers
fails the run within the timeouts set in the environment."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from clusterkit import answered, local_cluster, silent_port
from conftest import cli_env

from batch.sim import Simulator

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
ROWS = 4


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """An S3 server on 127.0.0.1 and the environment that points s3fs at it (the cluster's workers,
    started after, inherit it); the filesystem to look at the bucket with."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}")
        fs.mkdir("data")
        for p in range(3):
            ids = [f"s{p}-{i}" for i in range(ROWS)]
            buf = io.BytesIO()
            pd.DataFrame({"name": ids, "experience": [f"x {x}" for x in ids]}).to_parquet(buf)
            fs.pipe_file(f"data/in/part-{p}.parquet", buf.getvalue())
        yield fs
    server.stop()


@pytest.fixture(scope="module")
def scheduler(s3: Any) -> Iterator[str]:
    with local_cluster(2) as (cluster, _):
        yield cluster.scheduler_address


def s3_job(write_job: Callable[..., Path], url: str, out: str, **tables: dict[str, Any]) -> Path:
    return write_job("s3://data/in/", api={"base-url": url}, output={"path": out},
                     state={"path": "state"}, **tables)


def read_parts(fs: Any, prefix: str) -> pd.DataFrame:
    names = sorted(fs.ls(prefix))
    assert [n.rsplit("/", 1)[-1] for n in names] == [f"part-{i:05d}.parquet" for i in range(3)]
    return pd.concat([pd.read_parquet(io.BytesIO(fs.cat_file(n))) for n in names], ignore_index=True)


def test_s3_in_and_out_on_a_cluster(s3: Any, scheduler: str, simulator: tuple[str, Simulator],
                                    write_job: Callable[..., Path], run_batch: RunBatch) -> None:
    url, sim = simulator
    job = s3_job(write_job, url, "s3://data/out/")
    proc = run_batch(job, "--cluster", scheduler)
    assert proc.returncode == 0, proc.stderr
    out = read_parts(s3, "data/out")
    assert list(out["name"]) == [f"s{p}-{i}" for p in range(3) for i in range(ROWS)]
    assert out["error"].isna().all() and out["text"].notna().all()
    report = json.loads(s3.cat_file("data/out.report.json"))
    assert report["rows"] == 3 * ROWS and report["status"] == "complete"
    assert sum(answered(sim).values()) == 3 * ROWS
    again = run_batch(job, "--cluster", scheduler)  # parts already written are not run again
    assert again.returncode == 0, again.stderr
    assert len(sim.log) == 3 * ROWS


def test_s3_on_one_machine(s3: Any, simulator: tuple[str, Simulator], write_job: Callable[..., Path],
                           run_batch: RunBatch) -> None:
    url, sim = simulator
    job = s3_job(write_job, url, "s3://data/local-out/")
    proc = run_batch(job)
    assert proc.returncode == 0, proc.stderr
    assert len(read_parts(s3, "data/local-out")) == 3 * ROWS
    assert len(sim.log) == 3 * ROWS


@pytest.mark.parametrize("where", ["s3://no-such-bucket/in/", "s3://data/no-such-prefix/"])
def test_a_missing_bucket_or_prefix_is_refused(s3: Any, scheduler: str, simulator: tuple[str, Simulator],
                                               write_job: Callable[..., Path], run_batch: RunBatch,
                                               where: str) -> None:
    url, sim = simulator
    job = write_job(where, api={"base-url": url}, output={"path": "s3://data/never/"},
                    state={"path": "state"})
    proc = run_batch(job, "--cluster", scheduler)
    assert proc.returncode == 2, proc.stderr
    assert where.rstrip("/") in proc.stderr
    assert sim.log == [] and not s3.exists("data/never")


def test_a_later_remote_part_that_disagrees_stops_only_itself(s3: Any, scheduler: str,
                                                              simulator: tuple[str, Simulator],
                                                              write_job: Callable[..., Path],
                                                              run_batch: RunBatch) -> None:
    # Of a remote dataset only the first part is read before the run; a later one is held to its
    # columns on its worker. The odd part is refused (exit 2) and never published, so the folder
    # written reads as one table, and no column is silently dropped.
    url, sim = simulator
    for p, extra in enumerate([{}, {"extra": ["e"] * ROWS}, {}]):
        ids = [f"m{p}-{i}" for i in range(ROWS)]
        buf = io.BytesIO()
        pd.DataFrame({"name": ids, "experience": [f"x {x}" for x in ids], **extra}).to_parquet(buf)
        s3.pipe_file(f"data/mixed/part-{p}.parquet", buf.getvalue())
    job = write_job("s3://data/mixed/", api={"base-url": url}, output={"path": "s3://data/mixed-out/"},
                    state={"path": "state"})
    proc = run_batch(job, "--cluster", scheduler)
    assert proc.returncode == 2, proc.stderr
    assert "Column 'extra' is in part-1.parquet but not in part-0.parquet." in proc.stderr
    assert sorted(n.rsplit("/", 1)[-1] for n in s3.ls("data/mixed-out")) == ["part-00000.parquet",
                                                                             "part-00002.parquet"]
    out = pd.read_parquet("data/mixed-out", filesystem=s3)
    assert list(out["name"]) == [f"m{p}-{i}" for p in (0, 2) for i in range(ROWS)]
    assert sum(answered(sim).values()) == 2 * ROWS


@pytest.mark.parametrize(("timeouts", "says"), [
    ({"BATCH_STORAGE_CONNECT_TIMEOUT": "1", "BATCH_STORAGE_READ_TIMEOUT": "1"},
     "the object store did not answer in time (connect timeout 1 s, read timeout 1 s"),
    ({"BATCH_STORAGE_READ_TIMEOUT": "soon"}, "BATCH_STORAGE_READ_TIMEOUT: must be a number of seconds"),
])
def test_a_store_that_never_answers(simulator: tuple[str, Simulator], write_job: Callable[..., Path],
                                    run_batch: RunBatch, api_key: str, timeouts: dict[str, str],
                                    says: str) -> None:
    # An endpoint that accepts connections and never answers: with s3fs's own defaults a run waited
    # minutes (retries within retries); here each request has the timeouts set in the environment.
    url, sim = simulator
    job = write_job("s3://data/in/", api={"base-url": url}, output={"path": "s3://data/out/"},
                    state={"path": "state"})
    with silent_port() as port:
        env = cli_env(api_key, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port.port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", **timeouts)
        proc = run_batch(job, env=env, timeout=60)  # 60 s: a hang guard, not a measure
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert sim.log == []
