"""Helpers for the cluster tests: a Dask cluster of real worker processes on 127.0.0.1, partitioned
inputs, the simulator's log read as counts, bounded waits on conditions, a port that accepts and never
speaks, and a process's stderr read as it comes."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd
from distributed import Client, LocalCluster

from batch.sim import Simulator


@contextmanager
def local_cluster(workers: int = 2, **kwargs: Any) -> Iterator[tuple[LocalCluster, Client]]:
    """A scheduler and `workers` worker processes (one thread each) on 127.0.0.1; the scheduler's
    HTTP endpoint on a free loopback port."""
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                           host="127.0.0.1", dashboard_address="127.0.0.1:0", **kwargs)
    client = Client(cluster)  # type: ignore[no-untyped-call]
    try:
        yield cluster, client
    finally:
        client.close()  # type: ignore[no-untyped-call]
        cluster.close()


def make_parts(folder: Path, parts: int, rows: int, *, tag: str = "r") -> int:
    """`parts` Parquet files of `rows` rows each (name, experience), every row distinct; the total."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in range(parts):
        ids = [f"{tag}{p}-{i}" for i in range(rows)]
        pd.DataFrame({"name": ids, "experience": [f"worked on {x}" for x in ids]}).to_parquet(
            folder / f"in-{p:03d}.parquet")
    return parts * rows


def answered(sim: Simulator) -> Counter[str]:
    """How many times each distinct request body was answered (200)."""
    return Counter(e.body_sha256 for e in sim.log if e.status == 200 and e.body_sha256)


def refused(sim: Simulator) -> int:
    return sum(e.status == 429 for e in sim.log)


def busiest_window(sim: Simulator, seconds: float) -> int:
    """The most requests the simulator answered within any `seconds` (by its own log's stamps)."""
    stamps = sorted(e.t for e in sim.log if e.status == 200)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SilentPort:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word, nor reads one: a
    scheduler address or an object store that hangs. `accepted` counts the connections it took."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so that the accepting thread sees `close`
        self.port: int = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._open = True
        self._thread = threading.Thread(target=self._accept, name="silent-port", daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        return len(self.conns)

    def _accept(self) -> None:
        while self._open:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._open = False
        self._thread.join(5)
        for conn in [*self.conns, self.sock]:
            conn.close()


@contextmanager
def silent_port() -> Iterator[SilentPort]:
    port = SilentPort()
    try:
        yield port
    finally:
        port.close()


class Lines:
    """A process's stderr read line by line in a thread, for a test to wait on what it says."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), name="stderr", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def says(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        """Everything it said, once the process has ended (the stream is then closed)."""
        self._thread.join(10)
        self._stream.close()
        return "".join(self.lines)
