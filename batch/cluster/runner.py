"""The client's side of a cluster run: connect, check, hand out the partitions, add up the reports.

    connect (a scheduler address, or a LocalCluster on 127.0.0.1) ─► check the workers (batch
    importable, the state folder shared, the input reachable) ─► the limiter plugin and the job's
    budget in the scheduler ─► one task per partition not done yet ─► outcomes ─► report, exit code

Nothing is sent before every check has passed: a scheduler that cannot be reached, a worker without
batch, a state folder a worker does not see, a missing bucket or prefix are exit 2. A daily quota or a
fatal API error on one worker stops every worker (exit 3 or 4), as on one machine; Ctrl-C stops them
too (exit 3), and the next run resumes: parts already published are not run again, and each
partition's journal keeps every answer received.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from distributed import Client, LocalCluster, as_completed

from batch.cluster.checks import check_workers
from batch.cluster.extension import LimiterPlugin
from batch.cluster.work import PartTask, run_partition
from batch.dataset import partitions
from batch.dataset.partitions import Partition
from batch.dataset.parts import already_done, part_job, refuse_limit
from batch.dataset.summary import PartOutcome, finish, report_location
from batch.engine.preflight import check_job, check_model
from batch.engine.run import RunOptions
from batch.errors import FatalApiError, JobError, QuotaReached, Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.report.summary import Summary

log = logging.getLogger("batch.cluster")

CONNECT_TIMEOUT_S = 5.0


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client of the scheduler at `address`, or of a LocalCluster started for `local` / `local:N`."""
    if address.startswith("local"):
        n = int(address.split(":")[1]) if ":" in address else None
        # On loopback only; the scheduler's HTTP endpoint on a free loopback port, not the usual 8787.
        async with LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n, processes=True, threads_per_worker=1, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", asynchronous=True) as cluster, \
                Client(cluster, asynchronous=True) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    try:
        client = await Client(address, asynchronous=True,  # type: ignore[no-untyped-call]
                              timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise JobError(f"cannot reach the Dask scheduler at {address}: {exc}; check the address (--cluster "
                       "or [run] cluster) and that the scheduler is running") from None
    try:
        yield client
    finally:
        await client.close()


def job_key(job: Job) -> str:
    """Names the job's budget and tasks: the same job (file, output) finds them again after a crash."""
    what = f"{job.file}\n{job.output.dataset}\n{job.task.model}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]


class ClusterRun:
    def __init__(self, job: Job, endpoint: Endpoint, opts: RunOptions, address: str) -> None:
        self.job, self.endpoint, self.opts, self.address = job, endpoint, opts, address
        self.key = job_key(job)
        self._client: Client | None = None
        self._stopping: set[asyncio.Task[Any]] = set()
        self.interrupted = False
        self._quota: str | None = None
        self.summary: Summary | None = None  # the budget stopped every worker: a daily quota is spent

    def interrupt(self) -> None:
        self.interrupted = True
        if self._client is not None:
            task = asyncio.get_running_loop().create_task(self._stop("interrupted", None))
            self._stopping.add(task)

    async def _stop(self, reason: str, message: str | None) -> None:
        assert self._client is not None
        await _rpc(self._client).batch_stop(job=self.key, reason=reason, message=message)

    async def execute(self) -> Summary:
        job, started = self.job, time.monotonic()
        refuse_limit(self.opts)
        if (self.opts.mode or job.run.mode) != "online":
            raise JobError(f"{job.file}: [run] mode: the Batch API mode runs on one machine; drop --cluster "
                           "or [run] cluster (a cluster run is online)")
        if job.input.dataset is None:
            raise JobError(f"{job.file}: [input] path: a cluster runs a partitioned input (a folder, a glob "
                           "or a URL of files); point it at one, or run this file without --cluster")
        parts = partitions.list_partitions(job.input.dataset, job.input.format or None)
        assert job.output.dataset is not None
        partitions.check_output(job.output.dataset)
        todo = [p for p in parts if already_done(job, p) is None]
        done = [o for p in parts if (o := already_done(job, p)) is not None]
        for part in todo if not partitions.is_remote(job.input.dataset) else todo[:1]:
            check_job(part_job(job, part))  # a bad partition stops the run before anything is sent
        if todo and not self.endpoint.simulated:
            await check_model(job, self.endpoint.base_url, self.endpoint.key)
        outcomes = list(done)
        if todo:
            async with connect(self.address) as client:
                self._client = client
                try:
                    outcomes += await self._on_cluster(client, todo)
                finally:
                    self._client = None
        self.summary = summary = finish(job, outcomes, total=len(parts), started=started)
        log.info("report: %s", report_location(job))
        return _verdict(summary, outcomes, self._quota)

    async def _on_cluster(self, client: Client, todo: list[Partition]) -> list[PartOutcome]:
        job, ep = self.job, self.endpoint
        workers = await check_workers(client, job, todo)
        try:
            await client.register_plugin(LimiterPlugin())
        except Exception as exc:
            raise JobError(f"the Dask scheduler could not load batch's limiter ({type(exc).__name__}: "
                           f"{exc}); install batch[dask] where the scheduler runs, too") from None
        await _rpc(client).batch_open(
            job=self.key, rpm=ep.rpm, tpm=ep.tpm, learn_requests=job.limits.requests_per_minute is None,
            learn_tokens=job.limits.tokens_per_minute is None, key=ep.key)
        if self.interrupted:
            await self._stop("interrupted", None)
        nonce = hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:8]
        futures = [client.submit(run_partition, PartTask(job, part, self.key, ep.base_url, ep.rpm, ep.tpm,
                                                         ep.simulated, self.opts.retry_failed),
                                 key=f"batch-{self.key}-{nonce}-part-{part.index:05d}", pure=False)
                   for part in todo]
        index = {f.key: p for f, p in zip(futures, todo, strict=True)}
        log.info("cluster: %d partitions on %d workers (%s)", len(todo), workers, self.address)
        outcomes: list[PartOutcome] = []
        try:
            async for future in as_completed(futures):  # type: ignore[no-untyped-call]
                part = index[future.key]
                try:
                    outcome: PartOutcome = await future
                except Exception as exc:  # lost on too many workers, or a bug: stop, resumable
                    outcome = PartOutcome(part.index, "stopped", None,
                                          f"partition {part.location} failed on the cluster: "
                                          f"{type(exc).__name__}: {exc}")
                    await self._stop("interrupted", outcome.message)
                outcomes.append(outcome)
                rows = (outcome.summary or {}).get("rows")
                log.info("cluster: part %05d %s%s — %d of %d parts", part.index, outcome.status,
                         f" ({rows} rows)" if rows else "", len(outcomes), len(todo))
        finally:
            await _rpc(client).batch_close(job=self.key)
        state = await _rpc(client).batch_state(job=self.key)
        if state.get("halt") == "quota":
            self._quota = state.get("message") or "the daily quota is used up"
        return outcomes


def _rpc(client: Client) -> Any:
    """The scheduler's handlers, batch's among them (added by the plugin, so unknown to the types)."""
    return client.scheduler


def _verdict(summary: Summary, outcomes: list[PartOutcome], quota: str | None) -> Summary:
    """The run's summary, or the exception that gives its exit code (3 stopped, 4 fatal, 2 invalid)."""
    by = {o.status: o for o in outcomes}
    if "fatal" in by:
        raise FatalApiError(by["fatal"].message or "a fatal API error")
    if "invalid" in by:
        raise JobError(by["invalid"].message or "a partition is invalid")
    if quota is not None:
        raise QuotaReached(quota)
    if "stopped" in by:
        raise Stopped(by["stopped"].message or "interrupted; answers so far are saved. Run the same command "
                      "again to resume.")
    return summary
