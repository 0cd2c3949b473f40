"""Tests for batch.send.pool with a fake `send` (no HTTP), in virtual time (tests/fakeclock.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

import pytest
from fakeclock import now, run_virtual

from batch.errors import ApiError, BadRequest, FatalApiError, RateLimited, ServerError, TransportError
from batch.records import Answer, Completion, RateInfo, Request
from batch.report.summary import RunStats
from batch.send.pacing import Pacer
from batch.send.pool import Pool
from batch.send.retry import RetryPolicy

FAST = (10**9, 10**12)  # requests and tokens per minute that never hold anything back

# fail(call_number, request_index) -> an error to raise instead of answering, or None
Fail = Callable[[int, int], ApiError | None]


def request(i: int, est_tokens: int = 10) -> Request:
    return Request(fingerprint=f"fp{i:05d}", body=json.dumps({"i": i}).encode(), est_tokens=est_tokens, row=i)


def requests(n: int) -> list[Request]:
    return [request(i) for i in range(n)]


class FakeApi:
    """A `send` coroutine that records what it was asked, when, and how many at once."""

    def __init__(self, latency: float | Callable[[int], float] = 0.1, fail: Fail | None = None) -> None:
        self.latency = latency
        self.fail = fail
        self.calls: Counter[int] = Counter()
        self.starts: list[tuple[float, int]] = []  # (virtual time, request index)
        self.errors: list[tuple[float, ApiError]] = []  # (virtual time raised, error)
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, body: bytes) -> Completion:
        i = json.loads(body)["i"]
        self.calls[i] += 1
        call_no = len(self.starts) + 1
        self.starts.append((now(), i))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency(i) if callable(self.latency) else self.latency)
            exc = self.fail(call_no, i) if self.fail else None
            if exc is not None:
                self.errors.append((now(), exc))
                raise exc
            return Completion(text=f"answer {i}", finish_reason="stop", model="m", request_id=f"req_{i}",
                              input_tokens=4, output_tokens=6, total_tokens=10)
        finally:
            self.in_flight -= 1


class Run:
    """One pool over a fake API, with everything a test wants to look at afterwards."""

    def __init__(self, api: FakeApi, *, concurrency: int = 4, pacer: tuple[float, float] = FAST,
                 policy: RetryPolicy | None = None, rng: random.Random | None = None) -> None:
        self.api = api
        self.answers: list[Answer] = []
        self.stats = RunStats()
        self.concurrency = concurrency
        self.pacer_limits = pacer
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random(0)
        self.pool: Pool | None = None
        self.ended_at = 0.0

    def by_index(self) -> dict[int, Answer]:
        return {int(a.fingerprint[2:]): a for a in self.answers}

    async def run(self, reqs: Iterator[Request] | list[Request],
                  during: Callable[[Pool], Awaitable[None]] | None = None) -> Pool:
        pool = self.pool = Pool(self.api, Pacer(*self.pacer_limits), self.policy,
                                concurrency=self.concurrency, on_answer=self.answers.append, stats=self.stats,
                                rng=self.rng)
        helper = asyncio.ensure_future(during(pool)) if during else None
        await pool.run(reqs)
        self.ended_at = now()
        if helper is not None:
            helper.cancel()
        return pool


class MaxRandom(random.Random):
    """Every jittered delay at its ceiling, so backoffs are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_every_request_is_answered_exactly_once() -> None:
    api = FakeApi(latency=lambda i: 0.01 + (i % 7) * 0.07)
    r = Run(api, concurrency=8)
    pool = run_virtual(r.run(requests(300)))
    assert Counter(a.fingerprint for a in r.answers) == Counter(req.fingerprint for req in requests(300))
    assert all(a.ok and a.attempts == 1 and a.text == f"answer {i}" for i, a in r.by_index().items())
    assert set(api.calls.values()) == {1}
    assert pool.outstanding == set()
    assert pool.stop_reason is None and pool.fatal is None and pool.quota is None
    assert r.stats.requests == 300


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_concurrency_is_never_exceeded_and_is_used(concurrency: int) -> None:
    api = FakeApi(latency=lambda i: 0.05 + (i % 5) * 0.1)
    r = Run(api, concurrency=concurrency)
    run_virtual(r.run(requests(60)))
    assert api.max_in_flight == concurrency
    assert len(r.answers) == 60


def test_a_retryable_error_then_success_takes_two_attempts() -> None:
    failures: dict[int, list[ApiError]] = {
        5: [ServerError("Service Unavailable", status=503)], 9: [TransportError("dropped")],
        12: [RateLimited("slow down", limit="rpm", status=429, retry_after=1.0)]}
    api = FakeApi(fail=lambda _, i: failures[i].pop() if failures.get(i) else None)
    r = Run(api)
    run_virtual(r.run(requests(20)))
    got = r.by_index()
    assert len(r.answers) == 20
    assert all(a.ok for a in r.answers)
    assert (got[5].attempts, got[9].attempts, got[12].attempts) == (2, 2, 2)
    assert {i: a.attempts for i, a in got.items() if i not in (5, 9, 12)} == {
        i: 1 for i in range(20) if i not in (5, 9, 12)}
    assert api.calls[5] == 2 and r.stats.retries == 3 and r.stats.rate_limited == 1


def test_retries_run_out_into_a_transient_failure() -> None:
    api = FakeApi(fail=lambda _, i: ServerError("Bad Gateway", status=502) if i == 3 else None)
    r = Run(api, policy=RetryPolicy(max_attempts=3))
    run_virtual(r.run(requests(6)))
    failed = r.by_index()[3]
    assert failed.error is not None and "502" in failed.error
    assert failed.permanent is False
    assert failed.attempts == 3 == api.calls[3]
    assert sum(a.ok for a in r.answers) == 5


def test_a_bad_request_fails_the_row_permanently_at_once() -> None:
    api = FakeApi(fail=lambda _, i: BadRequest("context too long", status=400,
                                               code="context_length_exceeded") if i == 2 else None)
    r = Run(api)
    run_virtual(r.run(requests(5)))
    failed = r.by_index()[2]
    assert failed.permanent is True and failed.attempts == 1 and api.calls[2] == 1
    assert "context_length_exceeded" in (failed.error or "")


def test_a_request_larger_than_the_token_limit_is_never_sent() -> None:
    api = FakeApi()
    r = Run(api, pacer=(10**9, 8000))
    run_virtual(r.run([request(0, est_tokens=9000), request(1, est_tokens=100)]))
    got = r.by_index()
    assert api.calls[0] == 0 and api.calls[1] == 1
    assert got[0].permanent is True and got[0].error is not None and got[1].ok


def test_a_backoff_holds_no_concurrency() -> None:
    # One worker; request 0 fails once and backs off 10 s. Requests 1..3 go out meanwhile.
    api = FakeApi(fail=lambda n, i: ServerError("busy", status=503) if n == 1 else None)
    r = Run(api, concurrency=1, policy=RetryPolicy(base_s=10.0, cap_s=10.0), rng=MaxRandom())
    run_virtual(r.run(requests(4)))
    starts = {i: [t for t, j in api.starts if j == i] for i in range(4)}
    assert all(starts[i][0] < 1.0 for i in (1, 2, 3)), starts
    assert starts[0][1] >= 10.0, starts
    assert r.by_index()[0].attempts == 2


def test_a_429_cools_every_worker_down() -> None:
    state = {"done": False}

    def fail(_: int, i: int) -> ApiError | None:
        if i >= 10 and not state["done"]:
            state["done"] = True
            return RateLimited("Rate limit reached ... (TPM) ...", limit="tpm", status=429, retry_after=5.0)
        return None

    api = FakeApi(latency=0.1, fail=fail)
    r = Run(api, concurrency=4)
    run_virtual(r.run(requests(40)))
    (t429, _), = api.errors
    during = [(t, i) for t, i in api.starts if t429 < t < t429 + 5.0]
    assert during == [], f"sent during the cool-down that began at {t429}: {during}"
    assert any(t >= t429 + 5.0 for t, _ in api.starts)
    assert len(r.answers) == 40 and all(a.ok for a in r.answers)


def test_a_fatal_error_stops_the_pool_quickly() -> None:
    fatal = FatalApiError("Invalid API Key", status=401, code="invalid_api_key")
    api = FakeApi(latency=lambda i: 0.1 + (i % 3) * 0.05, fail=lambda n, _: fatal if n == 10 else None)
    r = Run(api, concurrency=4)
    pool = run_virtual(r.run(requests(1000)))
    assert pool.fatal is fatal
    assert pool.stop_reason
    (t_fatal, _), = api.errors
    assert [s for s in api.starts if s[0] > t_fatal] == []
    assert len(api.starts) <= 10 + 4
    assert r.ended_at < t_fatal + 1.0
    assert len(r.answers) < 20 and all(a.ok for a in r.answers)  # no row is blamed for a bad key
    assert pool.outstanding == set()


def test_a_daily_quota_stops_the_pool_resumably() -> None:
    daily = RateLimited("Rate limit reached ... requests per day (RPD) ...", limit="rpd", status=429,
                        retry_after=3600.0)
    api = FakeApi(latency=0.1, fail=lambda n, _: daily if n == 10 else None)
    r = Run(api, concurrency=4)
    pool = run_virtual(r.run(requests(1000)))
    assert pool.quota is not None
    assert getattr(pool.quota, "limit", None) == "rpd"
    assert pool.stop_reason and pool.fatal is None
    (t_quota, _), = api.errors
    assert [s for s in api.starts if s[0] > t_quota] == []
    assert r.ended_at < t_quota + 1.0, "waited out a daily quota instead of stopping"
    assert all(a.ok for a in r.answers)  # the refused row is left for the next run, not failed


def test_stop_drops_queued_work_and_lets_in_flight_sends_finish() -> None:
    api = FakeApi(latency=1.0)
    r = Run(api, concurrency=2)

    async def stop_soon(pool: Pool) -> None:
        await asyncio.sleep(0.5)
        pool.stop("interrupted")

    pool = run_virtual(r.run(requests(20), during=stop_soon))
    assert pool.stop_reason == "interrupted"
    assert len(api.starts) == 2
    assert sorted(int(a.fingerprint[2:]) for a in r.answers) == [0, 1]  # the two on the wire finished
    assert all(a.ok for a in r.answers)
    assert pool.outstanding == set()
    assert 1.0 <= r.ended_at < 1.5


def test_stop_drops_requests_waiting_out_a_backoff() -> None:
    api = FakeApi(latency=0.1, fail=lambda n, _: ServerError("busy", status=503) if n == 1 else None)
    r = Run(api, concurrency=1, policy=RetryPolicy(base_s=30.0, cap_s=30.0), rng=MaxRandom())

    async def stop_soon(pool: Pool) -> None:
        await asyncio.sleep(5.0)
        pool.stop("interrupted")

    run_virtual(r.run(requests(3), during=stop_soon))
    assert sorted(int(a.fingerprint[2:]) for a in r.answers) == [1, 2]  # 0 is dropped, not failed
    assert api.calls[0] == 1
    assert r.ended_at < 6.0


def test_the_intake_is_bounded() -> None:
    concurrency = 4
    r = Run(FakeApi(latency=1.0), concurrency=concurrency)
    pulled = 0
    ahead: list[int] = []

    def source() -> Iterator[Request]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            ahead.append(pulled - len(r.answers))
            yield request(i)

    run_virtual(r.run(source()))
    assert len(r.answers) == 10_000
    assert max(ahead) <= 3 * concurrency, max(ahead)


def test_pacing_spaces_the_sends() -> None:
    api = FakeApi(latency=0.01)
    r = Run(api, concurrency=8, pacer=(120, 10**12))  # one every 0.5 s from the first: no start-up burst
    run_virtual(r.run(requests(24)))
    times = sorted(t for t, _ in api.starts)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.5 - 1e-6, gaps
    assert 11.0 <= times[-1] <= 12.0


def test_stop_cancels_workers_waiting_for_the_pacer() -> None:
    api = FakeApi(latency=0.1)
    r = Run(api, concurrency=4, pacer=(6, 10**12))  # one request every 10 s

    async def stop_soon(pool: Pool) -> None:
        await asyncio.sleep(1.0)
        pool.stop("interrupted")

    pool = run_virtual(r.run(requests(10), during=stop_soon))
    assert len(api.starts) == 1  # the start-up request; the others were waiting for the pacer
    assert r.ended_at < 2.0
    assert pool.outstanding == set()


def test_a_spent_daily_request_budget_in_the_headers_stops_the_run() -> None:
    # Groq's x-ratelimit-remaining-requests counts the DAY: 0 left with hours to go means stop.
    class Spent(FakeApi):
        async def __call__(self, body: bytes) -> Completion:
            c = await super().__call__(body)
            if len(self.starts) < 5:
                return c
            return replace(c, rate=RateInfo(requests_limit_day=1000, requests_remaining_day=0,
                                            requests_reset_s=7200.0))

    api = Spent(latency=0.1)
    r = Run(api, concurrency=1)
    pool = run_virtual(r.run(requests(100)))
    assert pool.quota is not None and pool.stop_reason
    assert len(api.starts) == 5
    assert len(r.answers) == 5 and all(a.ok for a in r.answers)


def test_the_same_rejection_for_every_first_request_ends_the_run() -> None:
    """A job wrong for the server (every request a 400) stops after a handful, not one row at a time."""
    api = FakeApi(latency=0.05, fail=lambda call, i: BadRequest("max_completion_tokens too large",
                                                               status=400, code="invalid_value"))
    r = Run(api, concurrency=4)
    pool = run_virtual(r.run(requests(500)))
    assert isinstance(pool.fatal, FatalApiError) and "rejected the same way" in str(pool.fatal)
    assert len(api.starts) <= 10 + 4  # the streak, plus what was on the wire


def test_rejected_rows_after_a_success_are_only_row_failures() -> None:
    """Once anything succeeded, a run of bad rows is the rows' problem: every row gets its answer."""
    api = FakeApi(latency=0.01, fail=lambda call, i: None if i == 0 else BadRequest(
        "context_length_exceeded", status=400, code="context_length_exceeded"))
    r = Run(api, concurrency=1)
    pool = run_virtual(r.run(requests(40)))
    assert pool.fatal is None
    assert len(r.answers) == 40 and sum(a.ok for a in r.answers) == 1


def _refused(param: str) -> BadRequest:
    return BadRequest("Input should be 'text' or 'json_object'", status=500, param=param)


def test_a_refused_request_shape_ends_the_run_at_once_and_stores_no_row() -> None:
    """Before any success, a refusal naming a field every request carries (not the row's messages):
    the run ends with what was on the wire, and none of the refused rows is stored as failed."""
    api = FakeApi(latency=0.05, fail=lambda call, i: _refused("response_format.type"))
    r = Run(api, concurrency=4)
    pool = run_virtual(r.run(requests(500)))
    assert isinstance(pool.fatal, FatalApiError) and "'response_format'" in str(pool.fatal)
    assert pool.fatal.param == "response_format.type" and '[api] server = "llama.cpp"' in str(pool.fatal)
    assert len(api.starts) <= 4  # what was on the wire when the first refusal came back
    assert r.answers == [], "a refused row stored as failed would not be sent again after the fix"


def test_a_refused_shape_after_a_success_or_of_the_messages_fails_only_its_row() -> None:
    after = FakeApi(latency=0.01, fail=lambda call, i: None if i == 0 else _refused("response_format"))
    r = Run(after, concurrency=1)
    assert run_virtual(r.run(requests(12))).fatal is None
    assert len(r.answers) == 12 and sum(a.ok for a in r.answers) == 1
    rows = FakeApi(latency=0.01, fail=lambda call, i: _refused("messages.1.content") if i < 3 else None)
    r = Run(rows, concurrency=1)
    assert run_virtual(r.run(requests(12))).fatal is None
    assert [a.ok for a in r.answers] == [False] * 3 + [True] * 9
