"""The spend cap of one run (`[limits] max-cost-usd`): what may still be spent, at the model's prices.

A request is sent only if its worst case still fits in what is left: its prompt estimate plus its whole
completion budget, at the list price (the Batch API's half price for a request in a batch), cached
tokens not discounted. That worst case is reserved while the request is out; when the answer arrives
its real cost (from the usage the server reports) is counted and the rest handed back, so generous
budgets do not end a run early. A request that failed is not billed: its reservation is handed back.
The cap is per run: once a request no longer fits, the run stops (exit 3) and the next run continues
from the store, with a fresh cap — a nightly budget. A run of many parts keeps one cap for all of them:
the parts of a partitioned input share one `SpendCap` (`CapFactory`), and a cluster's workers each hold
a subclass that reserves from the one ledger in the Dask scheduler (`batch.cluster.spend`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batch.job import catalog
from batch.job.catalog import usd
from batch.records import Answer

# How a run gets its cap: (max-cost-usd, model, completion budget) -> the cap. `SpendCap` itself for a
# cap of one run's own; a door whose run is made of parts hands every part the same one.
CapFactory = Callable[[float, str, int], "SpendCap"]


class SpendCap:
    """`reserve` before sending, then `settle` (an answer) or `release` (no answer, nothing billed).

    A request whose worst case fits beside what is spent, but not beside what requests in flight have
    reserved, waits for them rather than ending the run: with `concurrency` requests out at once,
    their worst cases alone could otherwise stop a run that has spent almost nothing."""

    def __init__(self, cap_usd: float, model: str, completion_budget: int) -> None:
        info = catalog.MODELS.get(model)
        if info is None:  # preflight refuses a cap on a model without a price; this is a second guard
            raise ValueError(f"no price known for {model!r}; a spend cap cannot be kept")
        self.cap_usd, self.model, self._info = cap_usd, model, info
        self._completion = completion_budget
        self.spent_usd = 0.0  # the real cost of the answers received this run
        self.reserved_usd = 0.0  # worst cases of the requests out right now
        self.reached = False  # a request did not fit: the run stops
        self._changed = asyncio.Event()  # set whenever a reservation is handed back

    def worst(self, est_tokens: int, *, batch: bool = False) -> float:
        """The most a request of `est_tokens` (prompt estimate + completion budget) can cost."""
        completion = min(self._completion, est_tokens)
        info = self._info
        usd = ((est_tokens - completion) * info.usd_per_m_in + completion * info.usd_per_m_out) / 1e6
        return usd / 2 if batch else usd

    def try_reserve(self, est_tokens: int, *, batch: bool = False) -> float | None:
        """Reserve the request's worst case and return it, or None (and `reached`) if it does not fit
        beside what is spent and reserved (the Batch API's way: a reservation lasts until merging)."""
        usd = self.worst(est_tokens, batch=batch)
        if self.spent_usd + self.reserved_usd + usd > self.cap_usd:
            self.reached = True
            return None
        self.reserved_usd += usd
        return usd

    async def reserve(self, est_tokens: int) -> float | None:
        """Online: reserve the worst case, waiting while requests in flight hold what is left (their
        answers usually cost far less than reserved); None (and `reached`) once what is spent leaves
        no room, whatever comes back."""
        usd = self.worst(est_tokens)
        while self.spent_usd + self.reserved_usd + usd > self.cap_usd:
            if self.spent_usd + usd > self.cap_usd or self.reserved_usd <= 0:
                self.reached = True
                return None
            self._changed.clear()
            await self._changed.wait()
        self.reserved_usd += usd
        return usd

    def release(self, reserved: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - reserved)
        self._changed.set()

    def settle(self, reserved: float, answer: Answer, *, batch: bool = False) -> None:
        """Count what an answer really cost (its reservation, when the server reported no usage)."""
        self.release(reserved)
        self.spent_usd += self.cost_of(reserved, answer, batch=batch)

    def cost_of(self, reserved: float, answer: Answer, *, batch: bool = False) -> float:
        """What an answer cost, from the usage the server reported (else its whole reservation)."""
        if answer.input_tokens is None and answer.output_tokens is None:
            return reserved
        cost = catalog.cost_usd(self.model, answer.input_tokens or 0, answer.output_tokens or 0,
                                answer.cached_tokens or 0) or 0.0
        return cost / 2 if batch else cost

    def message(self) -> str:
        return cap_message(self.spent_usd, self.cap_usd)


def cap_message(spent_usd: float, cap_usd: float) -> str:
    """Why a run stopped at its cap; a run of many parts says it once, with the run's total."""
    return (f"spend cap reached: {usd(spent_usd)} of {usd(cap_usd)} spent by this run "
            "([limits] max-cost-usd; the next request's worst case did not fit). Answers so far are "
            "saved; the next run continues (run the same command, e.g. tomorrow night).")
