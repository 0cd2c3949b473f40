"""Helpers for the cluster tests: a Dask cluster of real worker processes on 127.0.0.1, partitioned
inputs, the simulator's log read as counts, and bounded waits on conditions."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
