"""A worker's task: one partition through the engine, paced by the cluster's limiter.

The task runs in a worker thread with an event loop of its own (the engine's CPU work must not hold
up the worker's own loop, which keeps its heartbeats); calls to the scheduler go through the worker's
loop. The task carries no secret: the API key is asked of the scheduler when the task starts and
lives only in the `Endpoint`, whose repr leaves it out.

Before it touches the partition's journal, the task claims the partition, and waits while another
worker holds it (a task from an earlier run, whose client was killed, may still be finishing it): one
writer per journal, so no row is sent twice. A run that is stopped meanwhile (a signal, a spent quota
or cap) ends the wait. The run's spend cap is the scheduler's too (`spend`): every part reserves from
the one ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from distributed import get_worker

from batch.cluster.lease import LeasedPacer
from batch.cluster.spend import SharedSpendCap, holder
from batch.dataset.agree import Found
from batch.dataset.partitions import Partition
from batch.dataset.parts import Attempt, part_so_far, run_part, stopped_outcome
from batch.dataset.summary import PartOutcome
from batch.engine.run import Run, RunOptions
from batch.errors import BatchError, FatalApiError, QuotaReached, Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.send.pacing import Pacing
from batch.send.spendcap import SpendCap

log = logging.getLogger("batch.cluster")

CLAIM_POLL_S = 0.5
Rpc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class PartTask:
    """Everything a worker needs for one partition, except the key (plain values: it is pickled)."""

    job: Job
    part: Partition
    job_key: str  # names the run's rate in the scheduler; a digest of the job, not a secret
    base_url: str
    rpm: float
    tpm: float
    simulated: bool
    retry_failed: bool
    run_token: str  # names this run in the partition's store: a part done again counts what it bought
    expect: Found | None  # the columns every part must have (checked on the client for the first one)
    news_every_s: float = 5.0  # how often the worker tells the scheduler what the part has done so far


def run_partition(task: PartTask) -> PartOutcome:
    worker = get_worker()
    loop = worker.loop.asyncio_loop  # type: ignore[attr-defined]

    async def rpc(op: str, **kwargs: Any) -> Any:
        call = getattr(worker.scheduler, op)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(**kwargs), loop))

    return asyncio.run(_run(task, rpc, worker.address))


async def _run(task: PartTask, rpc: Rpc, me: str) -> PartOutcome:
    while not await rpc("batch_claim", job=task.job_key, part=task.part.index, worker=me):
        reply = await rpc("batch_lease", job=task.job_key)
        if reply["halt"] is not None:  # stopped while another worker held it: leave it
            return PartOutcome(task.part.index, "stopped", None, reply["message"])
        await asyncio.sleep(CLAIM_POLL_S)
    try:
        return await _claimed(task, rpc, me)
    finally:
        await rpc("batch_release", job=task.job_key, part=task.part.index, worker=me)


async def _claimed(task: PartTask, rpc: Rpc, me: str) -> PartOutcome:
    caps: list[SharedSpendCap] = []
    me_here = holder(me, task.part.index)  # this attempt, in the run's spend ledger

    async def lease(**ask: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await rpc("batch_lease", job=task.job_key, **ask)
        return reply

    async def spend(**ask: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await rpc("batch_spend", job=task.job_key, holder=me_here, **ask)
        return reply

    def halt(reason: str) -> None:
        if attempt.run is not None:
            attempt.run.interrupt()

    def started(run: Run) -> None:
        if pacer.halted is not None:  # the halt came while the partition was being checked
            run.interrupt()

    def spend_cap(cap_usd: float, model: str, completion_budget: int) -> SpendCap:
        caps.append(SharedSpendCap(spend, cap_usd, model, completion_budget))
        return caps[-1]

    attempt = Attempt(started)
    pacer = LeasedPacer(lease, rpm=task.rpm, tpm=task.tpm, on_halt=halt)
    if (first := await lease())["halt"] is not None:  # stopped before this partition started: leave it
        return PartOutcome(task.part.index, "stopped", None, first["message"])

    def shared(endpoint: Endpoint, limits: Any) -> Pacing:
        return pacer

    key = await rpc("batch_secret", job=task.job_key)
    endpoint = Endpoint(task.base_url, key, task.rpm, task.tpm, simulated=task.simulated)
    opts = RunOptions(retry_failed=task.retry_failed, progress=False, pacer=shared, model_checked=True,
                      spend_cap=spend_cap, run_token=task.run_token)
    news = asyncio.create_task(_tell(task, rpc, attempt))
    try:
        return await run_part(task.job, task.part, endpoint, opts, attempt, expect=task.expect)
    except BatchError as exc:
        if isinstance(exc, QuotaReached | FatalApiError):  # news for every worker: stop them all
            await rpc("batch_stop", job=task.job_key, reason="quota" if isinstance(exc, Stopped) else "fatal",
                      message=str(exc))
        outcome = stopped_outcome(task.part, exc, attempt)
        if pacer.halted is not None and pacer.message and not isinstance(exc, QuotaReached | FatalApiError):
            outcome = PartOutcome(outcome.index, outcome.status, outcome.summary, pacer.message)
        return outcome
    finally:
        news.cancel()
        for cap in caps:
            await cap.close()
        await pacer.close()


async def _tell(task: PartTask, rpc: Rpc, attempt: Attempt) -> None:
    """Every `news_every_s`, what the part's run has done so far, to the scheduler, where the client
    reads it for the run's metrics file; news that cannot be delivered is skipped, never an error."""
    while True:
        await asyncio.sleep(task.news_every_s)
        figures = part_so_far(attempt)
        if figures is None:
            continue
        try:
            await rpc("batch_news", job=task.job_key, part=task.part.index, figures=figures)
        except Exception as exc:  # a scheduler without the handler, a lost connection: the next try
            log.debug("cluster: news of part %d not delivered: %s", task.part.index, exc)
