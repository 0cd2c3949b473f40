"""Tests for batch.send.retry: what each error class means (docs/groq.md, "Errors"), and the backoff."""

from __future__ import annotations

import random

import pytest

from batch.errors import (
    ApiError,
    BadRequest,
    FatalApiError,
    ModelUnavailable,
    RateLimited,
    RequestTooLarge,
    ServerError,
    TransportError,
)
from batch.send.retry import Action, RetryPolicy

POLICY = RetryPolicy(max_attempts=6)


def rng() -> random.Random:
    return random.Random(1234)


@pytest.mark.parametrize("exc", [
    FatalApiError("Invalid API Key", status=401, code="invalid_api_key"),
    FatalApiError("forbidden", status=403),
    ModelUnavailable("The model `x` does not exist", status=404, code="model_not_found"),
    ModelUnavailable("decommissioned", status=400, code="model_decommissioned"),
], ids=["401", "403", "model_not_found", "model_decommissioned"])
def test_fatal(exc: ApiError) -> None:
    for attempt in (1, 3, 6):
        assert POLICY.decide(exc, attempt, rng()).action is Action.FATAL


@pytest.mark.parametrize("limit", ["rpd", "tpd"])
def test_daily_rate_limit_is_a_quota_stop(limit: str) -> None:
    exc = RateLimited("Rate limit reached ... (RPD) ...", limit=limit, status=429, retry_after=3600.0)
    decision = POLICY.decide(exc, 1, rng())
    assert decision.action is Action.QUOTA


@pytest.mark.parametrize("limit", ["rpm", "tpm", None])
def test_minute_rate_limit_retries_no_sooner_than_the_server_asks(limit: str | None) -> None:
    exc = RateLimited("Rate limit reached", limit=limit, status=429, retry_after=5.289)
    for attempt in range(1, POLICY.max_attempts):
        decision = POLICY.decide(exc, attempt, rng())
        assert decision.action is Action.RETRY
        assert 5.289 <= decision.delay_s <= 5.289 + 1.0, decision


def test_rate_limit_without_retry_after_backs_off() -> None:
    exc = RateLimited("Rate limit reached", limit=None, status=429)
    decision = POLICY.decide(exc, 1, rng())
    assert decision.action is Action.RETRY
    assert 0.0 <= decision.delay_s <= POLICY.base_s + 1.0


def test_minute_rate_limit_gives_up_transiently_when_attempts_run_out() -> None:
    exc = RateLimited("Rate limit reached", limit="tpm", status=429, retry_after=1.0)
    decision = POLICY.decide(exc, POLICY.max_attempts, rng())
    assert decision.action is Action.GIVE_UP
    assert not decision.permanent


@pytest.mark.parametrize("exc", [
    ServerError("Internal Server Error", status=500),
    ServerError("Bad Gateway", status=502),
    ServerError("Service Unavailable", status=503),
    ServerError("Gateway Timeout", status=504),
    ServerError("capacity exceeded", status=498, code="capacity_exceeded"),
    TransportError("connection failed: ServerDisconnectedError"),
    TransportError("200 response body is not valid JSON", status=200),
], ids=["500", "502", "503", "504", "498", "transport", "bad-json"])
def test_transient_errors_retry_until_max_attempts_then_give_up_non_permanent(exc: ApiError) -> None:
    r = rng()
    for attempt in range(1, POLICY.max_attempts):
        decision = POLICY.decide(exc, attempt, r)
        assert decision.action is Action.RETRY, attempt
        assert 0.0 <= decision.delay_s <= min(POLICY.cap_s, POLICY.base_s * 2 ** (attempt - 1))
    decision = POLICY.decide(exc, POLICY.max_attempts, r)
    assert decision.action is Action.GIVE_UP
    assert decision.permanent is False


@pytest.mark.parametrize("exc", [
    BadRequest("property 'top_k' is unsupported", status=400, code="invalid_value"),
    BadRequest("context length exceeded", status=400, code="context_length_exceeded"),
    BadRequest("json_validate_failed", status=400, code="json_validate_failed"),
    BadRequest("not found", status=404),
    BadRequest("failed dependency", status=424),
    RequestTooLarge("Request too large for model", status=413, code="rate_limit_exceeded"),
], ids=["400", "400-context", "400-json", "404", "424", "413"])
def test_row_errors_give_up_permanently_at_once(exc: ApiError) -> None:
    decision = POLICY.decide(exc, 1, rng())
    assert decision.action is Action.GIVE_UP
    assert decision.permanent is True


def test_422_is_retried_at_most_twice() -> None:
    exc = BadRequest("unprocessable", status=422)
    r = rng()
    retries = 0
    for attempt in range(1, POLICY.max_attempts + 1):
        decision = POLICY.decide(exc, attempt, r)
        if decision.action is not Action.RETRY:
            break
        retries += 1
    assert 1 <= retries <= 2
    assert decision.action is Action.GIVE_UP
    assert decision.permanent is True


def test_422_respects_a_lower_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=1)
    decision = policy.decide(BadRequest("unprocessable", status=422), 1, rng())
    assert decision.action is Action.GIVE_UP


def test_full_jitter_stays_within_the_exponential_ceiling_and_spreads() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=30.0)
    r = random.Random(42)
    for attempt in range(1, 12):
        ceiling = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
        delays = [policy.backoff(attempt, r) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays), attempt
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(delays) < 0.1 * ceiling
        assert max(delays) > 0.9 * ceiling
    assert min(policy.cap_s, policy.base_s * 2 ** 10) == 30.0  # the cap is reached above


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    a = [POLICY.backoff(n, random.Random(7)) for n in range(1, 8)]
    b = [POLICY.backoff(n, random.Random(7)) for n in range(1, 8)]
    assert a == b
    exc = ServerError("busy", status=503)
    assert POLICY.decide(exc, 2, random.Random(7)) == POLICY.decide(exc, 2, random.Random(7))
