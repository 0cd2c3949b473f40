"""What ended a pool's sending early, as the exception a door turns into its exit code: a fatal API
error (4), a spent daily quota or spend cap, or a stop (3). One rule for every pass that sends online
(`run`, the SQL door's `answers`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batch.errors import QuotaReached, Stopped
from batch.send.pool import Pool
from batch.send.spendcap import SpendCap


def raise_stop(pool: Pool, spend_cap: SpendCap | None, stopped: str) -> None:
    """What ended a pool's sending early, raised: a fatal error, the daily quota, the spend cap, or a
    stop (`stopped`, the door's words for it)."""
    if pool.fatal is not None:
        raise pool.fatal
    if pool.quota is not None:
        raise QuotaReached(quota_message(pool.quota.limit, pool.quota.reset_s))
    if spend_cap is not None and spend_cap.reached:
        raise Stopped(spend_cap.message())
    if pool.stop_reason:
        raise Stopped(stopped)


def quota_message(limit: str | None, retry_after: float | None) -> str:
    what = {"rpd": "requests per day", "tpd": "tokens per day"}.get(limit or "", "daily")
    when = ""
    if retry_after:
        at = datetime.now(UTC) + timedelta(seconds=retry_after)
        when = f"; it resets in about {timedelta(seconds=round(retry_after))} (at {at:%Y-%m-%d %H:%M} UTC)"
    return (f"Groq's {what} quota for this model is used up{when}. Answers so far are saved; run the same "
            "command again after the reset to continue.")
