"""Whatever answers at a `--cluster` address, the run either uses it or exits 2 with a message that
says what was found — a port that accepts and never speaks, an HTTP server, a tls:// address without
TLS settings — and one SIGTERM stops it wherever it waits: connecting, waiting for workers. Real
sockets on 127.0.0.1, the command line as a subprocess; nothing is ever sent to the API."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from clusterkit import Lines, local_cluster, make_parts, silent_port
from conftest import BackgroundLoop, cli_env, wait_until

from batch.sim import Simulator

pytest.importorskip("distributed")

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
HANG_GUARD_S = 30.0  # the run must have ended by then (it is refused within seconds)


@pytest.fixture
def http_port(background_loop: BackgroundLoop) -> Iterator[int]:
    """A tiny HTTP server on 127.0.0.1 (every path 404), as a dashboard's port would be."""
    runner = web.AppRunner(web.Application())

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield background_loop.run(start())
    background_loop.run(runner.cleanup())


@pytest.fixture
def job(simulator: tuple[str, Simulator], write_job: Callable[..., Path], tmp_path: Path) -> Path:
    make_parts(tmp_path / "in", parts=2, rows=3)
    return write_job(tmp_path / "in", api={"base-url": simulator[0]}, output={"path": "out"})


def refused(proc: subprocess.CompletedProcess[str], sim: Simulator) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the Dask scheduler" in proc.stderr and "Traceback" not in proc.stderr
    assert sim.log == []


def test_a_port_that_accepts_and_never_speaks(job: Path, simulator: tuple[str, Simulator],
                                              run_batch: RunBatch) -> None:
    with silent_port() as port:
        proc = run_batch(job, "--cluster", f"tcp://127.0.0.1:{port.port}", timeout=HANG_GUARD_S)
    refused(proc, simulator[1])
    assert "does not speak Dask's protocol" in proc.stderr


def test_an_http_server(job: Path, simulator: tuple[str, Simulator], run_batch: RunBatch,
                        http_port: int) -> None:
    proc = run_batch(job, "--cluster", f"tcp://127.0.0.1:{http_port}", timeout=HANG_GUARD_S)
    refused(proc, simulator[1])
    assert "not a Dask scheduler" in proc.stderr


def test_tls_without_tls_settings(job: Path, simulator: tuple[str, Simulator], run_batch: RunBatch,
                                  http_port: int) -> None:
    proc = run_batch(job, "--cluster", f"tls://127.0.0.1:{http_port}", timeout=HANG_GUARD_S)
    refused(proc, simulator[1])
    assert "needs TLS settings" in proc.stderr and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in proc.stderr


def start(job: Path, address: str, api_key: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--cluster", address],
                            env=cli_env(api_key), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    return proc, Lines(proc.stderr)


def stopped_by_sigterm(proc: subprocess.Popen[str], err: Lines) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:  # it did not stop: end it, so the next test starts clean
            proc.kill()
            proc.wait()
        text = err.text()
    assert proc.returncode == 3, text
    return text


def test_sigterm_while_connecting(job: Path, simulator: tuple[str, Simulator], api_key: str,
                                  tmp_path: Path) -> None:
    with silent_port() as port:
        proc, err = start(job, f"tcp://127.0.0.1:{port.port}", api_key, tmp_path)
        wait_until(lambda: port.accepted > 0, "the run to connect")
        text = stopped_by_sigterm(proc, err)
    assert "interrupted while connecting" in text and "Traceback" not in text
    assert simulator[1].log == []


def test_sigterm_while_waiting_for_workers(job: Path, simulator: tuple[str, Simulator], api_key: str,
                                           tmp_path: Path) -> None:
    with local_cluster(0) as (cluster, _):  # a scheduler without workers: the run waits for one
        proc, err = start(job, cluster.scheduler_address, api_key, tmp_path)
        wait_until(lambda: err.says("checking its workers"), "the run to wait for workers")
        text = stopped_by_sigterm(proc, err)
    assert "interrupted while waiting for the Dask cluster's workers" in text
    assert simulator[1].log == []
