"""The client's side of a cluster run: connect, check, hand out the partitions, add up the reports.

    connect (a scheduler address, or a LocalCluster on 127.0.0.1) ─► check the workers (batch
    importable, the state folder shared, the input reachable) ─► the limiter plugin and the job's
    shared rate in the scheduler ─► one task per partition not done yet ─► outcomes ─► report, exit code

Nothing is sent before every check has passed: a scheduler that cannot be reached (`connect`), a
worker without batch, a state folder a worker does not see, a missing bucket or prefix, partitions
that disagree on their columns are exit 2. A daily quota, the spend cap (one for the run, in the
scheduler) or a fatal API error on one worker stops every worker (exit 3 or 4), as on one machine;
a signal stops them too (exit 3), wherever the run waits — connecting, for workers, for answers —
and the next run resumes: parts already published are not run again, and each partition's journal
keeps every answer received.

While it runs, each worker tells the scheduler every `NEWS_EVERY_S` what its part has done so far,
and the client reads that as often: `so_far` (the run's metrics file) adds up the parts finished and
the latest news of those under way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from typing import Any

from distributed import Client, as_completed

from batch.cluster.checks import check_workers
from batch.cluster.connect import Interrupted, connect, interruptible
from batch.cluster.extension import LimiterPlugin
from batch.cluster.work import PartTask, run_partition
from batch.dataset import partitions
from batch.dataset.agree import Found
from batch.dataset.partitions import Partition
from batch.dataset.parts import already_done, check_partitions, refuse_limit
from batch.dataset.summary import PartOutcome, finish, merge, report_location
from batch.engine.preflight import check_model
from batch.engine.run import RunOptions
from batch.errors import FatalApiError, JobError, QuotaReached, Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.report.summary import Summary

log = logging.getLogger("batch.cluster")

NEWS_EVERY_S = 5.0  # workers' news of their parts, and the client's reading of it (the metrics file's ~15 s)


def job_key(job: Job) -> str:
    """Names the job's rate and tasks: the same job (file, output) finds them again after a crash."""
    what = f"{job.file}\n{job.output.dataset}\n{job.task.model}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]


class ClusterRun:
    def __init__(self, job: Job, endpoint: Endpoint, opts: RunOptions, address: str) -> None:
        self.job, self.endpoint, self.opts, self.address = job, endpoint, opts, address
        self.key = job_key(job)
        self.token = secrets.token_hex(8)  # this run, in every partition's store (`dataset.bought`)
        self._client: Client | None = None
        self._stopping: set[asyncio.Task[Any]] = set()
        self.interrupted = False
        self._signalled = asyncio.Event()  # ends a wait (connecting, for workers) at once
        self._quota: str | None = None  # the shared rate stopped every worker: a daily quota is spent
        self._capped = False  # ... or the run's spend cap was reached
        self.summary: Summary | None = None
        # while it runs, for `so_far`: the parts' outcomes, the workers' news of the others, by part
        self._outcomes: list[PartOutcome] = []
        self._news: dict[int, dict[str, Any]] = {}
        self._total, self._started = 0, time.monotonic()

    def so_far(self) -> Summary | None:
        """The parts done (by this run or an earlier one) and the latest news of those under way,
        added up as the report adds them; None before the partitions are known."""
        if not self._total:
            return None
        outcomes = list(self._outcomes)
        done = {o.index for o in outcomes}
        outcomes += [PartOutcome(i, "running", figures) for i, figures in self._news.items() if i not in done]
        return merge(self.job, outcomes, total=self._total, elapsed_s=time.monotonic() - self._started)

    def interrupt(self) -> None:
        self.interrupted = True
        self._signalled.set()
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
        # A bad partition stops the run before anything is sent: every local one; of a remote dataset
        # the first (a later one is held to its columns on its worker).
        expect = check_partitions(job, parts, every=not partitions.is_remote(job.input.dataset))
        earlier = [already_done(job, p) for p in parts]  # one look per part (a remote marker, a HEAD)
        todo = [p for p, o in zip(parts, earlier, strict=True) if o is None]
        outcomes = self._outcomes
        outcomes += [o for o in earlier if o is not None]
        self._total, self._started = len(parts), started
        if todo and not self.endpoint.simulated:
            await check_model(job, self.endpoint.base_url, self.endpoint.key)
        if todo:
            async with connect(self.address, self._signalled) as client:
                self._client = client
                try:
                    await self._on_cluster(client, todo, expect, outcomes)
                finally:
                    self._client = None
        self.summary = summary = finish(job, outcomes, total=len(parts), started=started,
                                        capped=self._capped)
        log.info("report: %s", report_location(job))
        return _verdict(summary, outcomes, self._quota, self._capped)

    async def _on_cluster(self, client: Client, todo: list[Partition], expect: Found | None,
                          outcomes: list[PartOutcome]) -> None:
        """Runs the partitions `todo`, their outcomes added to `outcomes` as they come."""
        job, ep = self.job, self.endpoint
        log.info("cluster: connected to the scheduler at %s; checking its workers", self.address)
        try:
            workers = await interruptible(check_workers(client, job, todo), self._signalled)
        except Interrupted:
            raise Stopped("interrupted while waiting for the Dask cluster's workers; nothing was sent. Run "
                          "the same command again to start the run.") from None
        try:
            await client.register_plugin(LimiterPlugin())
        except Exception as exc:
            raise JobError(f"the Dask scheduler could not load batch's limiter ({type(exc).__name__}: "
                           f"{exc}); install batch[dask] where the scheduler runs, too") from None
        await _rpc(client).batch_open(
            job=self.key, rpm=ep.rpm, tpm=ep.tpm, learn_requests=job.limits.requests_per_minute is None,
            learn_tokens=job.limits.tokens_per_minute is None, key=ep.key, cap_usd=job.limits.max_cost_usd)
        if self.interrupted:
            await self._stop("interrupted", None)
        nonce = hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:8]
        futures = [client.submit(run_partition, PartTask(job, part, self.key, ep.base_url, ep.rpm, ep.tpm,
                                                         ep.simulated, self.opts.retry_failed, self.token,
                                                         expect, NEWS_EVERY_S),
                                 key=f"batch-{self.key}-{nonce}-part-{part.index:05d}", pure=False)
                   for part in todo]
        index = {f.key: p for f, p in zip(futures, todo, strict=True)}
        log.info("cluster: %d partitions on %d workers (%s)", len(todo), workers, self.address)
        listening = asyncio.create_task(self._listen(client))
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
                         f" ({rows} rows)" if rows else "", len(outcomes), self._total)
        finally:
            listening.cancel()
            await _rpc(client).batch_close(job=self.key)
        state = await _rpc(client).batch_state(job=self.key)
        if state.get("halt") == "quota":
            self._quota = state.get("message") or "the daily quota is used up"
        self._capped = bool(state.get("capped"))

    async def _listen(self, client: Client) -> None:
        """The workers' news of their parts, read every NEWS_EVERY_S for `so_far`."""
        while True:
            try:
                news = await _rpc(client).batch_news(job=self.key)
            except Exception as exc:  # a scheduler with an older plugin: no news, the parts' outcomes only
                log.debug("cluster: no news of the parts: %s", exc)
                return
            self._news = {int(part): figures for part, figures in news.items()}
            await asyncio.sleep(NEWS_EVERY_S)


def _rpc(client: Client) -> Any:
    """The scheduler's handlers, batch's among them (added by the plugin, so unknown to the types)."""
    return client.scheduler


def _verdict(summary: Summary, outcomes: list[PartOutcome], quota: str | None, capped: bool) -> Summary:
    """The run's summary, or the exception that gives its exit code (3 stopped, 4 fatal, 2 invalid)."""
    by = {o.status: o for o in outcomes}
    if "fatal" in by:
        raise FatalApiError(by["fatal"].message or "a fatal API error")
    if "invalid" in by:
        raise JobError(by["invalid"].message or "a partition is invalid")
    if quota is not None:
        raise QuotaReached(quota)
    if capped:  # said once, with the run's cost as its report counts it (`finish`)
        raise Stopped(summary.message or "spend cap reached")
    if "stopped" in by:
        raise Stopped(by["stopped"].message or "interrupted; answers so far are saved. Run the same command "
                      "again to resume.")
    return summary
