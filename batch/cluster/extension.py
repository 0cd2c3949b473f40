"""The scheduler's side of a cluster run: one `SharedRate` per job, its spend cap (`SpendLedger`), the
job's API key, and which worker holds which partition — state that must outlive any worker, so it
lives in the Dask scheduler, as distributed's own Semaphore does: a scheduler plugin that registers
comm handlers, called by the client as `client.scheduler.batch_<op>(...)` and by workers as
`worker.scheduler.batch_<op>(...)`.

The plugin is registered idempotently under one name: a second run (or a client that comes back after
being killed) finds the rates, cool-downs and partition claims as they were. A partition is claimed
by one worker at a time (the journal of a partition must have one writer); a worker that leaves the
cluster (killed, lost) gives up its claims at once, so its partition can run elsewhere.

The key is held in the scheduler's memory only, handed to a worker that asks for its job, never put in
a task, a key or a log line, and dropped when the client closes the job.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import Scheduler, SchedulerPlugin

from batch.cluster.rate import SharedRate
from batch.cluster.spend import SpendLedger

log = logging.getLogger("batch.cluster")

NAME = "batch-limiter"


class _JobState:
    def __init__(self, rate: SharedRate, key: str | None, limits: tuple[float, float, bool, bool]) -> None:
        self.rate, self.key, self.limits = rate, key, limits
        self.claims: dict[int, str] = {}  # partition -> worker address
        self.spend: SpendLedger | None = None  # the run's spend cap, if the job has one
        self.news: dict[str, dict[str, Any]] = {}  # partition -> what its worker last said it has done


class LimiterPlugin(SchedulerPlugin):
    idempotent = True  # registering again keeps the running plugin and its state
    name = NAME

    def __init__(self) -> None:
        self.jobs: dict[str, _JobState] = {}

    async def start(self, scheduler: Scheduler) -> None:
        scheduler.handlers.update({
            "batch_open": self.open, "batch_lease": self.lease, "batch_stop": self.stop,
            "batch_secret": self.secret, "batch_claim": self.claim, "batch_release": self.release,
            "batch_close": self.close_job, "batch_state": self.state, "batch_spend": self.spend,
            "batch_news": self.news,
        })

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        for name, job in self.jobs.items():
            if job.spend is not None:
                job.spend.lost(worker)
            for part in [p for p, w in job.claims.items() if w == worker]:
                del job.claims[part]
                log.info("batch %s: partition %d released (worker %s left)", name, part, worker)

    # -- handlers: keyword arguments in, plain values out -----------------------------------------
    def open(self, job: str, rpm: float, tpm: float, learn_requests: bool, learn_tokens: bool,
             key: str | None, cap_usd: float | None = None) -> bool:
        """Start (or resume) a job's rate. A new run of the same job, with the same limits, clears the
        last one's halt but keeps what was learned; with other limits it starts a new rate. A running
        cool-down holds either way (the server's 429 was about the account, not the job file). Each
        run has the whole spend cap again (`cap_usd`: max-cost-usd), as on one machine."""
        limits = (rpm, tpm, learn_requests, learn_tokens)
        found = self.jobs.get(job)
        if found is None or found.limits != limits:
            rate = SharedRate(rpm, tpm, learn_requests=learn_requests, learn_tokens=learn_tokens)
            if found is None:
                found = self.jobs[job] = _JobState(rate, key, limits)
            else:
                rate.resume_at = found.rate.resume_at
                found.rate, found.limits = rate, limits
        found.key = key
        found.rate.halt = found.rate.message = None
        found.spend = None if cap_usd is None else SpendLedger(cap_usd)
        found.news = {}
        return True

    def lease(self, job: str, **ask: Any) -> dict[str, Any]:
        found = self.jobs.get(job)
        if found is None:
            return {"requests": 0, "tokens": 0.0, "wait": 0.0, "resume_in": 0.0, "halt": "closed",
                    "message": "the run was closed", "rpm": 0.0, "tpm": 0.0}
        return found.rate.lease(**ask)

    def stop(self, job: str, reason: str, message: str | None = None) -> bool:
        if job in self.jobs:
            self.jobs[job].rate.stop(reason, message)
        return True

    async def spend(self, job: str, act: str, holder: str, usd: float = 0.0, reserved: float = 0.0,
                    cost: float = 0.0) -> dict[str, Any]:
        """The spend cap's acts: reserve (waits a little for others' reservations), settle, release,
        finish (an attempt at a part is over).
        (`act`, not `op`: distributed's comm calls take `op` as the handler's name.)"""
        found = self.jobs.get(job)
        ledger = None if found is None else found.spend
        if found is None or ledger is None:  # the run was closed: take no new request
            return {"verdict": "reached", "spent": 0.0}
        if act == "reserve":
            reply = await ledger.reserve(holder, usd)
            if reply["verdict"] == "reached":  # parts not started yet need not start
                found.rate.stop("spend-cap", None)
            return reply
        if act == "settle":
            ledger.settle(holder, reserved, cost)
        elif act == "finish":
            ledger.finish(holder)
        else:
            ledger.release(holder, reserved)
        return {"verdict": "ok", "spent": ledger.spent_usd}

    def news(self, job: str, part: int | None = None,
             figures: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """A worker's news of its partition (`part`, `figures`: its report so far), kept for the
        client; the client's call (no part) gets every partition's latest, by partition number."""
        found = self.jobs.get(job)
        if found is None:
            return {}
        if part is not None:
            if figures is not None:
                found.news[str(part)] = figures
            return {}
        return dict(found.news)

    def secret(self, job: str) -> str | None:
        found = self.jobs.get(job)
        return found.key if found else None

    def claim(self, job: str, part: int, worker: str) -> bool:
        found = self.jobs.get(job)
        if found is None:
            return False
        holder = found.claims.setdefault(part, worker)
        return holder == worker

    def release(self, job: str, part: int, worker: str) -> bool:
        found = self.jobs.get(job)
        if found is not None and found.claims.get(part) == worker:
            del found.claims[part]
        return True

    def close_job(self, job: str) -> bool:
        """The client is done: forget the key (rate and learned limits stay for the next run)."""
        found = self.jobs.get(job)
        if found is not None:
            found.key = None
        return True

    def state(self, job: str) -> dict[str, Any]:
        found = self.jobs.get(job)
        if found is None:
            return {}
        b = found.rate
        spend = found.spend
        return {"rpm": b.rpm, "tpm": b.tpm, "halt": b.halt, "message": b.message, "cooldowns": b.cooldowns,
                "claims": dict(found.claims), "capped": spend is not None and spend.reached,
                "spent": None if spend is None else spend.spent_usd}
