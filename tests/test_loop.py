"""The event loop is never held long: a run over many rows, most of them answered already, keeps
answering a ticking task (so a second Ctrl-C is heard at once and latencies exclude stalls).

A monitor task sleeps 10 ms at a time inside the run's own loop and records the longest gap between
its wake-ups. Before the scan handed the loop back between chunks and the output pass moved to a
thread, a run like this one held the loop for seconds at a stretch; the bound asserted here (1 s) is
a guard against such a hang, far above the ~10 ms steps the run now takes, not a timing measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.run import Run, RunOptions
from batch.job.config import Job, load_job
from batch.job.endpoint import Endpoint
from batch.records import Answer, Request
from batch.render.prompts import Renderer
from batch.sim import Simulator
from batch.store.answers import Store
from batch.tables.source import Source

ROWS = 60_000
SENT = 300  # rows left unanswered, so that the run also sends while it scans


def answered_job(tmp_path: Path, write_job: Callable[..., Path]) -> tuple[Job, Source]:
    """A job of ROWS rows, all but the last SENT answered in its store by an earlier run."""
    text = [f"ticket {i}: the export fails after {i % 97} minutes on the reporting page" for i in range(ROWS)]
    pq.write_table(pa.table({"name": [f"n{i}" for i in range(ROWS)], "experience": text}),
                   tmp_path / "in.parquet", row_group_size=ROWS)
    job = load_job(write_job(tmp_path / "in.parquet"))
    source = Source(job.input.path, job.input.format)
    renderer, store = Renderer(job.task), Store(job.state.path, flush_rows=50_000)
    store.begin_run()
    for row0, chunk in source.numbered():  # an earlier run answered all but the last SENT rows
        for group in renderer.groups(chunk, row0):
            for i, fp in enumerate(group.fingerprints):
                if fp is not None and group.first_row + i < ROWS - SENT:
                    r: Request = group.request(i)
                    store.put(Answer(fingerprint=r.fingerprint, text="earlier", attempts=1))
    store.close()
    return job, source


def test_a_long_scan_never_holds_the_loop(tmp_path: Path, simulator: tuple[str, Simulator],
                                          write_job: Callable[..., Path]) -> None:
    url, sim = simulator
    job, source = answered_job(tmp_path, write_job)

    gaps: list[float] = []

    async def monitor(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def main() -> Any:
        stop = asyncio.Event()
        watcher = asyncio.create_task(monitor(stop))
        try:
            endpoint = Endpoint(url, "gsk_loop_test", 6_000_000.0, 1e9, simulated=True)
            return await Run(job, source, endpoint, RunOptions(progress=False)).execute()
        finally:
            stop.set()
            await watcher

    summary = asyncio.run(main())
    assert summary.rows == ROWS and summary.rows_ok == ROWS
    assert summary.rows_from_store == ROWS - SENT and summary.requests_sent == SENT
    assert len(sim.log) == SENT
    assert len(gaps) > 10
    assert max(gaps) < 1.0, f"the loop was held for {max(gaps):.2f} s"


def test_cancelled_while_writing_the_output_stops_and_leaves_no_output(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: Callable[..., Path]) -> None:
    """A second signal during pass 2 (which runs in a thread) ends the run at once; the thread stops
    after its chunk, the store is closed after it, and no output file is left."""
    url, _ = simulator
    job, source = answered_job(tmp_path, write_job)

    async def main() -> None:
        endpoint = Endpoint(url, "gsk_loop_test", 6_000_000.0, 1e9, simulated=True)
        run = asyncio.create_task(Run(job, source, endpoint, RunOptions(progress=False)).execute())
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.parquet.*.tmp")):  # pass 2 has begun writing
            assert not run.done(), "the run ended before its output pass could be interrupted"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        # Already gone when the run ends: the thread was waited for, not left writing.
        assert not list(tmp_path.glob(".out.parquet.*")) and not (tmp_path / "out.parquet").exists()

    asyncio.run(main())
    again = Store(job.state.path)  # unlocked: the run closed it, after the thread had let go
    try:
        assert again.counts()["answers"] == ROWS  # pass 1's answers were all kept
    finally:
        again.close()
