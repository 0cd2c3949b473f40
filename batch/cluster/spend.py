"""The one spend cap of a cluster run (`[limits] max-cost-usd`), kept in the Dask scheduler like the
rate: `SpendLedger` there, and on each worker a `SharedSpendCap` that the engine's pool uses as
it uses a `SpendCap` of its own.

    pool.reserve ─► SharedSpendCap ─► scheduler: SpendLedger.reserve ─► granted | wait | reached
    pool.settle / release ─► SharedSpendCap ─► SpendLedger.settle / release  (sent, not awaited)

The rule is one machine's (`batch.send.spendcap`), applied to the whole run: a request is sent only if
its worst case (prompt estimate plus its whole completion budget) fits beside what the run spent and
what every worker holds reserved; when an answer arrives its real cost is counted and the rest handed
back. The first request that no longer fits beside what is spent ends the run for every worker (the
rate halts too, so parts not started yet do not start).

How far past the cap a run can go: a reservation is the request's worst case, so the cap is exceeded
only by what requests in flight cost beyond their reserved worst case — their prompts' real token
counts above the estimate (the completion is capped by max-new-tokens) — never by a part or worker
that did not know what the others spent. A worker that is lost with requests on the wire has their
worst cases counted as spent (they may have been billed), which can stop a run a little early, never
late; the report counts what the answers really cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from batch.records import Answer
from batch.send.spendcap import SpendCap, cap_message

log = logging.getLogger("batch.cluster")

PATIENCE_S = 1.0  # how long the scheduler holds a reserve that waits for others' reservations
_EPSILON = 1e-12  # reservations handed back in pieces leave rounding dust; below this nothing is held

Call = Callable[..., Awaitable[dict[str, Any]]]  # Call(act=..., **arguments) -> the ledger's reply


class SpendLedger:
    """The run's spend in the scheduler: what was spent, and what each holder (one attempt at a part,
    on one worker) has reserved for requests it has out."""

    def __init__(self, cap_usd: float) -> None:
        self.cap_usd = cap_usd
        self.spent_usd = 0.0
        self.held: dict[str, float] = {}  # holder -> the worst cases of its requests out now
        self.done: set[str] = set()  # holders whose attempt is over: nothing more is granted to them
        self.reached = False
        self._changed: asyncio.Event | None = None  # made on the scheduler's loop, when first awaited

    @property
    def reserved_usd(self) -> float:
        return sum(self.held.values())

    def try_reserve(self, holder: str, usd: float) -> str:
        """"granted", "reached" (it never will fit: the run stops), or "wait" (it fits once the
        requests out now are answered: they usually cost far less than their worst case)."""
        if self.reached or holder in self.done:
            return "reached"
        if self.spent_usd + self.reserved_usd + usd <= self.cap_usd:
            self.held[holder] = self.held.get(holder, 0.0) + usd
            return "granted"
        if self.spent_usd + usd > self.cap_usd or self.reserved_usd <= _EPSILON:
            self.reached = True
            return "reached"
        return "wait"

    async def reserve(self, holder: str, usd: float, patience_s: float = PATIENCE_S) -> dict[str, Any]:
        """`try_reserve`, waiting up to `patience_s` for reservations to come back (the worker asks
        again after that: a lost worker's wait ends with it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        while (verdict := self.try_reserve(holder, usd)) == "wait" and loop.time() < deadline:
            changed = self._changed = self._changed or asyncio.Event()
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), deadline - loop.time())
        return {"verdict": verdict, "spent": self.spent_usd}

    def settle(self, holder: str, reserved: float, cost: float) -> None:
        self._hand_back(holder, reserved)
        self.spent_usd += cost

    def release(self, holder: str, reserved: float) -> None:
        self._hand_back(holder, reserved)

    def finish(self, holder: str) -> None:
        """An attempt is over, its answers settled: what it still holds was granted to a reserve it
        gave up waiting for (its run stopping), and is handed back."""
        self.done.add(holder)
        self.held.pop(holder, None)
        self._wake()

    def lost(self, worker: str) -> None:
        """A worker left with requests out: they may have been billed, so their worst cases count."""
        for holder in [h for h in self.held if h.startswith(f"{worker}#")]:
            self.spent_usd += self.held.pop(holder)
            log.info("spend cap: %s left with requests out; their worst case is counted as spent", holder)
        self._wake()

    def _hand_back(self, holder: str, usd: float) -> None:
        left = self.held.get(holder, 0.0) - usd
        if left > _EPSILON:
            self.held[holder] = left
        else:
            self.held.pop(holder, None)
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()


def holder(worker: str, part: int) -> str:
    """Names one attempt at a part in the ledger (what a lost worker held is found by its address)."""
    return f"{worker}#{part}#{secrets.token_hex(4)}"


class SharedSpendCap(SpendCap):
    """A worker's side of the run's one cap: reserves from the scheduler's `SpendLedger`, and tells it
    what each answer cost (without waiting: `close` delivers what is still on its way). `spent_usd`
    is this part's own; `run_spent_usd` the whole run's, as the scheduler last said."""

    def __init__(self, call: Call, cap_usd: float, model: str, completion_budget: int) -> None:
        super().__init__(cap_usd, model, completion_budget)
        self._call = call
        self._tasks: set[asyncio.Task[None]] = set()
        self.run_spent_usd = 0.0

    async def reserve(self, est_tokens: int) -> float | None:
        usd = self.worst(est_tokens)
        while True:
            reply = await self._call(act="reserve", usd=usd)
            self.run_spent_usd = float(reply["spent"])
            if reply["verdict"] == "granted":
                self.reserved_usd += usd
                return usd
            if reply["verdict"] == "reached":
                self.reached = True
                return None

    def try_reserve(self, est_tokens: int, *, batch: bool = False) -> float | None:
        raise NotImplementedError("the Batch API mode runs on one machine, not on a cluster")

    def release(self, reserved: float) -> None:
        super().release(reserved)
        self._send(act="release", reserved=reserved)

    def settle(self, reserved: float, answer: Answer, *, batch: bool = False) -> None:
        cost = self.cost_of(reserved, answer, batch=batch)
        super().release(reserved)
        self.spent_usd += cost
        self._send(act="settle", reserved=reserved, cost=cost)

    def message(self) -> str:
        """The run's figure, as last heard (the runner says it again at the end, from the report)."""
        return cap_message(max(self.run_spent_usd, self.spent_usd), self.cap_usd)

    def _send(self, **news: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(news))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, news: dict[str, Any]) -> None:
        try:
            await self._call(**news)
        except Exception as exc:  # the scheduler gone: the run ends anyway; never break the pool
            log.warning("spend cap: the scheduler did not hear of %s: %s", news.get("act"), exc)

    async def close(self) -> None:
        """Deliver what is on its way, then end this attempt's hold on the cap."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._deliver({"act": "finish"})
        self.reserved_usd = 0.0
