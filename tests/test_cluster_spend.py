"""One spend cap a run (`[limits] max-cost-usd`), whatever the number of partitions or workers: the
scheduler's ledger in virtual time, then a partitioned run on one machine and on a cluster of real
Dask worker processes on 127.0.0.1, against the simulator: the run stops at the cap (exit 3), having
spent no more than it, and its message and its report give the same figure."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clusterkit import local_cluster, make_parts

from batch.cluster.spend import SpendLedger
from batch.job.catalog import usd
from batch.sim import Simulator

pytest.importorskip("distributed")

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
StartSim = Callable[..., tuple[str, Simulator]]
CAP = 0.0001


def test_the_ledger_holds_every_worker_to_one_cap() -> None:
    async def main() -> tuple[list[str], float, bool]:
        ledger = SpendLedger(1.0)
        verdicts = [(await ledger.reserve("w1#0", 0.4))["verdict"],
                    (await ledger.reserve("w2#1", 0.4))["verdict"]]
        waiting = asyncio.ensure_future(ledger.reserve("w2#1", 0.4, patience_s=60))
        await asyncio.sleep(0)
        assert not waiting.done()  # 0.8 held: it fits only once an answer hands its reservation back
        ledger.settle("w1#0", 0.4, 0.1)
        verdicts.append((await waiting)["verdict"])
        ledger.lost("w2")  # a lost worker's requests out may have been billed: their worst case counts
        verdicts.append((await ledger.reserve("w1#0", 0.2))["verdict"])
        return verdicts, ledger.spent_usd, ledger.reached

    verdicts, spent, reached = asyncio.run(main())
    assert verdicts == ["granted", "granted", "granted", "reached"]
    assert spent == pytest.approx(0.1 + 0.8) and reached


def test_an_attempt_that_ends_hands_back_what_it_still_holds() -> None:
    # A part that stops gives up a reserve it was waiting for; if the scheduler granted it meanwhile,
    # nobody would ever hand it back, and the others would wait for it for good.
    async def main() -> tuple[str, str]:
        ledger = SpendLedger(1.0)
        await ledger.reserve("w1#0#a", 0.6)
        ledger.finish("w1#0#a")
        late = await ledger.reserve("w1#0#a", 0.1)  # a reserve answered after its attempt ended
        other = await ledger.reserve("w2#1#b", 0.9)
        return late["verdict"], other["verdict"]

    assert asyncio.run(main()) == ("reached", "granted")


def cap_job(write_job: Callable[..., Path], tmp_path: Path, url: str, rows: int) -> Path:
    make_parts(tmp_path / "in", parts=4, rows=rows)
    # Each request: ~30 prompt tokens + 100 completion at most, about $0.00003 at worst; the
    # simulator's answers cost a fifth of that. Each of the 4 parts alone could spend the cap.
    return write_job(tmp_path / "in", api={"base-url": url}, output={"path": "out"},
                     task={"max-new-tokens": 100}, limits={"max-cost-usd": CAP, "concurrency": 2})


def one_cap(proc: subprocess.CompletedProcess[str], sim: Simulator, tmp_path: Path) -> None:
    assert proc.returncode == 3, proc.stderr
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["status"] == "stopped" and report["max_cost_usd"] == CAP
    assert 0 < report["estimated_cost_usd"] <= CAP
    # The report counts every answer the server gave: what was paid, not what one part saw.
    assert report["input_tokens"] + report["output_tokens"] == sum(e.tokens for e in sim.log)
    said = re.findall(r"spend cap reached: (\$[0-9.]+) of \$0\.0001 spent by this run", proc.stderr)
    assert said and set(said) == {usd(report["estimated_cost_usd"])}, proc.stderr
    assert report["message"].startswith(f"spend cap reached: {said[0]} of $0.0001")


def test_one_cap_across_the_parts_on_one_machine(simulator: tuple[str, Simulator],
                                                 write_job: Callable[..., Path], run_batch: RunBatch,
                                                 tmp_path: Path) -> None:
    url, sim = simulator
    job = cap_job(write_job, tmp_path, url, rows=12)
    one_cap(run_batch(job), sim, tmp_path)
    assert len(sim.log) < 24  # not 4 caps' worth


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with local_cluster(2) as (cluster, _):
        yield cluster.scheduler_address


def test_one_cap_across_the_workers(scheduler: str, start_sim: StartSim, api_key: str,
                                    write_job: Callable[..., Path], run_batch: RunBatch,
                                    tmp_path: Path) -> None:
    url, sim = start_sim(latency_ms=20, api_key=api_key)
    job = cap_job(write_job, tmp_path, url, rows=12)
    proc = run_batch(job, "--cluster", scheduler, timeout=120)
    one_cap(proc, sim, tmp_path)
    assert "on 2 workers" in proc.stderr
