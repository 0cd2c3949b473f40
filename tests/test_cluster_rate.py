"""The cluster's one rate and the workers' leasing pacers, in virtual time (no Dask, no sleeping):
several pacers leasing from one `SharedRate` stay together at its rate, a 429 on one holds the others,
a halt stops every one, and what the server says is learned once for all. Plus the boundary: dask
and fsspec are imported only when a cluster or a remote location is asked for."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from fakeclock import now, run_virtual

from batch.cluster.lease import LeasedPacer
from batch.cluster.rate import SharedRate
from batch.records import RateInfo
from batch.send.pacing import RPM_MARGIN


def pacers(rate: SharedRate, n: int, halts: list[str] | None = None) -> list[LeasedPacer]:
    async def call(**ask: Any) -> dict[str, Any]:
        await asyncio.sleep(0.002)  # a round trip to the scheduler
        return rate.lease(**ask)

    told = halts if halts is not None else []
    return [LeasedPacer(call, rpm=rate.rpm, tpm=rate.tpm, on_halt=told.append) for _ in range(n)]


async def send_for(pacer: LeasedPacer, seconds: float, stamps: list[float], tokens: int = 10) -> None:
    """Admit requests back to back for `seconds`, recording when each was admitted."""
    end = now() + seconds
    while now() < end:
        if await pacer.acquire(tokens):
            stamps.append(now())
            pacer.settle(tokens, tokens)


def test_four_pacers_together_stay_at_the_rate() -> None:
    async def main() -> list[float]:
        rate = SharedRate(600, 10**9, clock=now)
        stamps: list[float] = []
        await asyncio.gather(*(send_for(p, 60.0, stamps) for p in pacers(rate, 4)))
        return stamps

    stamps = run_virtual(main())
    assert 0.97 * 600 <= len(stamps) <= 600 + 20  # a minute of rate, plus at most the burst
    for start in range(0, 55, 5):  # no window of 5 s above 5 s of rate plus the burst
        assert sum(start <= t < start + 5 for t in stamps) <= 50 + 20


def test_tokens_are_shared_and_a_big_request_goes_into_debt() -> None:
    async def main() -> tuple[int, bool]:
        rate = SharedRate(10**6, 600, clock=now)  # 10 tokens/s, a 20-token burst
        stamps: list[float] = []
        a, b = pacers(rate, 2)
        await asyncio.gather(send_for(a, 30.0, stamps, tokens=5), send_for(b, 30.0, stamps, tokens=5))
        big = await asyncio.wait_for(a.acquire(100), 60)  # above the burst, within the minute
        return len(stamps), big

    admitted, big = run_virtual(main())
    assert 0.97 * 60 <= admitted <= 60 + 4 + 4  # 300 tokens in 30 s, plus the burst and one slice
    assert big


def test_a_429_on_one_worker_holds_the_others() -> None:
    async def main() -> list[float]:
        rate = SharedRate(600, 10**9, clock=now)
        a, b = pacers(rate, 2)
        stamps: list[float] = []
        await send_for(b, 2.0, [])
        a.cool_down(10.0)
        await asyncio.sleep(0.1)  # the news reaches the scheduler
        await send_for(b, 12.0, stamps)
        return stamps

    stamps = run_virtual(main())
    assert len([t for t in stamps if t < 12.0]) <= 10  # during the cool-down: at most what b held
    assert len([t for t in stamps if t >= 12.0]) > 0  # and it goes on after


def test_a_halt_stops_every_worker() -> None:
    async def main() -> tuple[list[str], bool]:
        rate = SharedRate(600, 10**9, clock=now)
        halts: list[str] = []
        a, b = pacers(rate, 2, halts)
        await send_for(a, 1.0, [])
        rate.stop("quota", "the daily quota is spent")
        try:
            await asyncio.wait_for(send_for(b, 10.0, []), 30)
            stuck = False
        except TimeoutError:
            stuck = True
        return halts, stuck

    halts, stuck = run_virtual(main())
    assert halts == ["quota"] and stuck


def test_limits_learned_by_one_worker_hold_for_all() -> None:
    async def main() -> tuple[float, float, float]:
        rate = SharedRate(600, 20_000, learn_requests=True, learn_tokens=True, clock=now)
        a, b = pacers(rate, 2)
        a.learn_limit("rpm", 300)
        await asyncio.sleep(0.1)
        b.observe(RateInfo(tokens_limit_minute=12_000))
        await b.acquire(10)
        return rate.rpm, rate.tpm, b.tpm

    rpm, tpm, seen = run_virtual(main())
    assert rpm == pytest.approx(300 * RPM_MARGIN)
    assert tpm == 12_000 and seen == 12_000


def test_dask_and_fsspec_load_only_when_asked_for() -> None:
    code = ("import sys, batch.doors.cli, batch.dataset.parts, batch.dataset.partitions; "
            "print(sorted(m for m in ('distributed', 'dask', 'fsspec', 's3fs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
