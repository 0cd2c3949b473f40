"""Tests for batch.send.pacing.Pacer, in virtual time (tests/fakeclock.py): nothing here sleeps."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from fakeclock import now, run_virtual

from batch.send.pacing import Pacer

UNLIMITED_TPM = 10**12
UNLIMITED_RPM = 10**9


async def admissions(pacer: Pacer, tokens: int, *, until: float, workers: int = 8) -> list[float]:
    """Virtual times at which `workers` greedy workers were admitted, up to `until`."""
    times: list[float] = []

    async def worker() -> None:
        while True:
            await pacer.acquire(tokens)
            if now() >= until:
                return
            times.append(now())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(times)


def first_minute(times: list[float]) -> int:
    return sum(1 for t in times if t < 60.0)


def test_30_rpm_admits_about_30_in_the_first_minute_not_a_burst() -> None:
    times = run_virtual(admissions(Pacer(30, UNLIMITED_TPM), 1, until=120.0))
    at_start = sum(1 for t in times if t < 0.001)
    assert at_start <= 2, f"{at_start} requests at t=0: a whole-minute burst"
    assert 29 <= first_minute(times) <= 32
    # Evenly spread: no gap much longer than the 2 s spacing, and none much shorter after the start.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 2.0 + 1e-6
    assert min(gaps[2:]) >= 2.0 - 1e-6


def test_600_rpm_steady_rate_is_exact() -> None:
    times = run_virtual(admissions(Pacer(600, UNLIMITED_TPM, burst_s=3.0), 1, until=130.0))
    # Any full minute after the start-up: within 2% of 600.
    for start in (10.0, 30.0, 60.0):
        n = sum(1 for t in times if start <= t < start + 60.0)
        assert abs(n - 600) <= 12, (start, n)


def test_600_rpm_first_minute_within_2_percent() -> None:
    times = run_virtual(admissions(Pacer(600, UNLIMITED_TPM, burst_s=3.0), 1, until=60.0))
    assert abs(first_minute(times) - 600) <= 12, first_minute(times)


def test_token_pacing_8000_tpm_with_500_token_requests() -> None:
    times = run_virtual(admissions(Pacer(UNLIMITED_RPM, 8000), 500, until=180.0))
    per_minute = [sum(1 for t in times if m * 60 <= t < (m + 1) * 60) for m in range(3)]
    for n in per_minute:
        assert 15 <= n <= 17, per_minute


def test_request_larger_than_the_bucket_is_admitted_and_paced() -> None:
    # 8000 tokens/min with a 2 s burst holds ~267 tokens; a 2000-token request must still pass
    # (aiolimiter alone would raise ValueError), at 4 per minute.
    pacer = Pacer(UNLIMITED_RPM, 8000, burst_s=2.0)
    times = run_virtual(admissions(pacer, 2000, until=120.0, workers=3))
    assert times, "a request larger than the bucket was never admitted"
    assert 7 <= len(times) <= 9, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 15.0 - 1e-3, gaps


def test_fits_is_false_above_the_tokens_per_minute_limit() -> None:
    pacer = Pacer(30, 8000)
    assert pacer.fits(1)
    assert pacer.fits(8000)
    assert not pacer.fits(8001)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Pacer(0, 8000)
    with pytest.raises(ValueError):
        Pacer(30, -1)


def test_cool_down_holds_every_waiting_worker() -> None:
    async def scenario() -> tuple[float, list[float]]:
        pacer = Pacer(UNLIMITED_RPM, UNLIMITED_TPM)
        await asyncio.sleep(10.0)
        start = now()
        pacer.cool_down(5.0)
        done = await asyncio.gather(*(_acquire_at(pacer) for _ in range(6)))
        return start, done

    start, done = run_virtual(scenario())
    assert all(t >= start + 5.0 - 1e-6 for t in done), (start, done)
    assert all(t <= start + 5.0 + 0.01 for t in done), (start, done)


def test_shorter_later_cool_down_does_not_shorten_it() -> None:
    async def scenario() -> list[float]:
        pacer = Pacer(UNLIMITED_RPM, UNLIMITED_TPM)
        pacer.cool_down(5.0)  # until t=5
        waiters = [asyncio.create_task(_acquire_at(pacer)) for _ in range(3)]
        await asyncio.sleep(2.0)
        pacer.cool_down(1.0)  # until t=3: must not shorten
        assert pacer.cooldowns == 1
        return await asyncio.gather(*waiters)

    done = run_virtual(scenario())
    assert all(t >= 5.0 - 1e-6 for t in done), done


def test_longer_later_cool_down_extends_it_even_for_workers_already_waiting() -> None:
    async def scenario() -> list[float]:
        pacer = Pacer(UNLIMITED_RPM, UNLIMITED_TPM)
        pacer.cool_down(5.0)
        waiters = [asyncio.create_task(_acquire_at(pacer)) for _ in range(3)]
        await asyncio.sleep(4.0)
        pacer.cool_down(4.0)  # until t=8
        return await asyncio.gather(*waiters)

    done = run_virtual(scenario())
    assert all(t >= 8.0 - 1e-6 for t in done), done


def test_cool_down_started_while_waiting_in_the_bucket_is_honoured() -> None:
    async def scenario() -> list[float]:
        pacer = Pacer(30, UNLIMITED_TPM)  # one request every 2 s
        await pacer.acquire(1)  # t=0: the bucket is now empty
        waiter = asyncio.create_task(_acquire_at(pacer))  # would pass at t=2
        await asyncio.sleep(1.0)
        pacer.cool_down(10.0)  # until t=11
        return [await waiter]

    done = run_virtual(scenario())
    assert done[0] >= 11.0 - 1e-6, done


async def _acquire_at(pacer: Pacer, tokens: int = 1) -> float:
    await pacer.acquire(tokens)
    return now()


# -- reservations, refunds and learning ---------------------------------------------------------


def test_refunds_let_overestimated_requests_use_the_whole_budget() -> None:
    """Each request reserves 1,000 tokens but uses 250: settled, the pace follows the 250."""

    async def run(settle: bool) -> int:
        pacer = Pacer(UNLIMITED_RPM, 6_000)
        count = 0

        async def worker() -> None:
            nonlocal count
            while True:
                await pacer.acquire(1_000)
                if now() >= 120.0:
                    return
                count += 1
                if settle:
                    pacer.settle(1_000, 250)

        await asyncio.gather(*(worker() for _ in range(4)))
        return count

    unsettled, settled = run_virtual(run(False)), run_virtual(run(True))
    assert 11 <= unsettled <= 13  # 12,000 tokens in 2 minutes / 1,000 reserved each
    assert 44 <= settled <= 50  # / 250 actually used each
    assert settled >= 3.5 * unsettled


def test_headers_raise_an_unstated_token_limit_and_lower_a_stated_one() -> None:
    from batch.records import RateInfo

    async def tpm_after(learn: bool, stated: int, reported: int) -> float:
        pacer = Pacer(30, stated, learn_tokens=learn)
        pacer.observe(RateInfo(tokens_limit_minute=reported))
        return pacer.tokens_per_minute

    assert run_virtual(tpm_after(True, 8_000, 30_000)) == 30_000  # unstated: follows the server up
    assert run_virtual(tpm_after(True, 8_000, 5_000)) == 5_000  # ... and down
    assert run_virtual(tpm_after(False, 8_000, 30_000)) == 8_000  # stated: never raised
    assert run_virtual(tpm_after(False, 8_000, 5_000)) == 5_000  # ... but lowered


def test_a_429_pins_the_request_limit_and_implausible_token_limits_are_ignored() -> None:
    async def scenario() -> tuple[float, float]:
        pacer = Pacer(30, 8_000, learn_requests=True, learn_tokens=True)
        pacer.settle(600, 500)  # the server accepted a 500-token request
        pacer.learn_limit("tpm", 3)  # "Limit 3" tokens/min cannot be right
        pacer.learn_limit("rpm", 120)
        return pacer.requests_per_minute, pacer.tokens_per_minute

    assert run_virtual(scenario()) == (120 * 0.97, 8_000)  # just below the limit the 429 named


def test_an_unstated_request_limit_is_probed_upward_while_it_binds() -> None:
    async def scenario() -> tuple[float, int]:
        pacer = Pacer(30, UNLIMITED_TPM, learn_requests=True)
        times = await admissions(pacer, 1, until=60.0)
        return pacer.requests_per_minute, len(times)

    rpm, admitted = run_virtual(scenario())
    assert rpm > 300  # 30 x 1.5 every 5 s while requests were the bottleneck
    assert admitted > 90  # well above the 30 a fixed base-tier pace would give


def test_a_stated_request_limit_is_never_probed() -> None:
    times = run_virtual(admissions(Pacer(30, UNLIMITED_TPM), 1, until=60.0))
    assert len(times) <= 31


def test_a_low_remaining_tokens_header_slows_the_run_down() -> None:
    """Another job spending the organization's budget shows as few tokens left: wait for them."""
    from batch.records import RateInfo

    async def scenario(remaining: int | None) -> float:
        pacer = Pacer(UNLIMITED_RPM, 6_000)  # 100 tokens/s
        await pacer.acquire(1)
        await asyncio.sleep(10)  # idle: the bucket fills to its 2 s burst (200 tokens)
        pacer.observe(RateInfo(tokens_remaining_minute=remaining))
        start = now()
        await pacer.acquire(100)
        return now() - start

    assert run_virtual(scenario(None)) < 0.01  # the burst covers it at once
    assert 0.99 <= run_virtual(scenario(0)) <= 1.01  # the server has none left: wait 1 s for 100 tokens


def test_the_first_remaining_tokens_count_fills_the_bucket_instead_of_waiting() -> None:
    from batch.records import RateInfo

    async def times(remaining: int | None) -> list[float]:
        pacer = Pacer(UNLIMITED_RPM, 6_000)  # 100 tokens/s, a 2 s burst of 200
        out = []
        for i in range(3):
            assert await pacer.acquire(100)
            out.append(now())
            if i == 0:  # the first answer: it used its 100 tokens; the server tells what is left
                pacer.settle(100, 100)
                pacer.observe(RateInfo(tokens_remaining_minute=remaining))
        return out

    told = run_virtual(times(5_000))
    assert told == pytest.approx([0.0, 0.0, 0.0], abs=1e-3)  # the server said the minute is nearly free
    slow = run_virtual(times(None))
    assert slow[0] == pytest.approx(0.0, abs=1e-3)  # the first request never waits (it borrows)
    assert slow[1] >= 1.9  # without the count: the debt and an empty bucket pace the next ones
    tight = run_virtual(times(50))
    assert tight[1] >= 0.45  # the server has less than a request left: never raised past it
