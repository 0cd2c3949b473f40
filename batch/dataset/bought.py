"""What earlier attempts of the same run bought for a partition.

A partition whose worker is lost (kill -9) is done again on another worker. The answers the lost
worker committed before it died were paid for by this run; to the new attempt they are already in the
store, and without this they would be reported as found there ("from the store") while the requests,
tokens and cost that bought them went missing from the report. So each engine run of a part names the
run it belongs to in the part's store (`RunOptions.run_token` -> `Store.begin_run`); before an attempt
starts, what the store already holds under that name is read (`bought_before`), and it is added to the
attempt's report (`counted`). Requests that were on the wire when the worker died left no trace in the
store and cannot be counted (at most the concurrency of that worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch.fields import SUMMED
from batch.job.catalog import cost_usd
from batch.store import runlog
from batch.store.answers import Store

Bought = dict[str, int]  # answers, ok, requests, and the usage counts of `batch.fields.SUMMED`


def bought_before(state: Path, token: str | None) -> Bought | None:
    """What earlier attempts named `token` left in the part's store (a read-only look: no lock)."""
    if token is None or not state.exists():
        return None
    store = Store(state, readonly=True)
    try:
        bought = runlog.bought_by(store, token)
    finally:
        store.close()
    return bought if bought["requests"] or bought["answers"] else None


def counted(summary: dict[str, Any], bought: Bought | None, model: str, *,
            stopped: bool = False) -> dict[str, Any]:
    """A part's report (a `Summary` as a dict) with what earlier attempts bought counted in: as this
    run's requests, tokens and cost, and not as answers from the store. A stopped part's report
    counts the answers it received (`rows_ok`); a finished one's already has them, as output rows."""
    if not bought:
        return summary
    out = dict(summary)
    out["requests_sent"] = int(out.get("requests_sent") or 0) + bought["requests"]
    for name in SUMMED:
        out[name] = int(out.get(name) or 0) + bought[name]
    if stopped:
        out["rows_ok"] = int(out.get("rows_ok") or 0) + bought["ok"]
    else:
        out["rows_from_store"] = max(0, int(out.get("rows_from_store") or 0) - bought["answers"])
    extra = cost_usd(model, bought["input_tokens"], bought["output_tokens"], bought["cached_tokens"])
    cost = out.get("estimated_cost_usd")
    out["estimated_cost_usd"] = None if cost is None or extra is None else round(float(cost) + extra, 6)
    return out
