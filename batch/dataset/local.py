"""A partitioned job on this machine (`PartitionedRun`): the parts one after the other through
`parts.run_part`, sharing one pacer and one spend cap, and the run's report added up from the parts'
(`summary`). While it runs, `so_far` adds up the parts done and what the part under way has answered,
for the run's metrics file.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace
from typing import Any

from batch.dataset import partitions
from batch.dataset.partitions import Partition
from batch.dataset.parts import (
    Attempt,
    check_partitions,
    part_so_far,
    refuse_limit,
    run_part,
    stopped_outcome,
)
from batch.dataset.summary import PartOutcome, finish, merge
from batch.engine.online import local_pacer
from batch.engine.preflight import check_model
from batch.engine.run import Run, RunOptions
from batch.errors import FatalApiError, Stopped
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.report.summary import Summary
from batch.send.pacing import Pacing
from batch.send.spendcap import SpendCap

log = logging.getLogger("batch")


class PartitionedRun:
    """A partitioned job on this machine: the parts in order, one pacer shared by all of them."""

    def __init__(self, job: Job, endpoint: Endpoint, opts: RunOptions) -> None:
        self.job, self.endpoint, self.opts = job, endpoint, opts
        self._run: Run | None = None
        self.interrupted = False
        self.summary: Summary | None = None
        # while it runs, for `so_far`: the parts' outcomes, the part under way, the number of parts
        self._outcomes: list[PartOutcome] = []
        self._current: tuple[Partition, Attempt] | None = None
        self._total, self._started = 0, time.monotonic()

    def so_far(self) -> Summary | None:
        """The parts done (or done by an earlier run) and what the part under way has answered, added
        up as the report adds them; None before the partitions are known."""
        if not self._total:
            return None
        outcomes = list(self._outcomes)
        if self._current is not None and (running := part_so_far(self._current[1])) is not None:
            outcomes.append(PartOutcome(self._current[0].index, "running", running))
        return merge(self.job, outcomes, total=self._total, elapsed_s=time.monotonic() - self._started)

    def interrupt(self) -> None:
        self.interrupted = True
        if self._run is not None:
            self._run.interrupt()

    def _hold(self, run: Run) -> None:
        self._run = run
        if self.interrupted:
            run.interrupt()

    def _finish(self, outcomes: list[PartOutcome], total: int, started: float,
                capped: bool = False) -> Summary:
        self.summary = finish(self.job, outcomes, total=total, started=started, capped=capped)
        return self.summary

    async def execute(self) -> Summary:
        job, endpoint, started = self.job, self.endpoint, time.monotonic()
        refuse_limit(self.opts)
        assert job.input.dataset is not None
        parts = partitions.list_partitions(job.input.dataset, job.input.format or None)
        assert job.output.dataset is not None
        partitions.check_output(job.output.dataset)
        check_partitions(job, parts)  # every partition, before the first request
        if not endpoint.simulated:
            await check_model(job, endpoint.base_url, endpoint.key)
        shared: list[Pacing] = []

        def pacer(ep: Endpoint, limits: Any) -> Pacing:
            if not shared:
                shared.append(local_pacer(ep, limits))
            return shared[0]

        caps: list[SpendCap] = []

        def spend_cap(cap_usd: float, model: str, completion_budget: int) -> SpendCap:
            if not caps:  # one cap for the run, whatever the number of parts
                caps.append(SpendCap(cap_usd, model, completion_budget))
            return caps[0]

        opts = replace(self.opts, pacer=pacer, spend_cap=spend_cap, run_token=secrets.token_hex(8),
                       model_checked=True)
        log.info("run: %d partitions of %s -> %s", len(parts), job.input.dataset, job.output.dataset)
        outcomes = self._outcomes
        self._total, self._started = len(parts), started
        for part in parts:
            attempt = Attempt(self._hold)
            self._current = part, attempt
            try:
                outcomes.append(await run_part(job, part, endpoint, opts, attempt))
            except (Stopped, FatalApiError) as exc:
                outcomes.append(stopped_outcome(part, exc, attempt))
                capped = bool(caps) and caps[0].reached and not isinstance(exc, FatalApiError)
                summary = self._finish(outcomes, len(parts), started, capped)
                if capped:  # said once, with what the whole run spent (the report's figure)
                    raise Stopped(summary.message or caps[0].message()) from None
                raise
            except asyncio.CancelledError:  # stopped at once (a second signal, a Python caller's cancel)
                outcomes.append(stopped_outcome(part, Stopped("stopped at once; answers so far are saved"),
                                                attempt))
                try:  # its report still tells what it did
                    self._finish(outcomes, len(parts), started)
                except Exception as exc:
                    log.warning("could not write the report: %s", partitions.trouble(exc))
                raise
            finally:
                self._run = self._current = None
            if self.interrupted:
                exc2 = Stopped("interrupted; finished parts are written and answers so far are saved. Run "
                               "the same command again to resume.")
                self._finish(outcomes, len(parts), started)
                raise exc2
        return self._finish(outcomes, len(parts), started)
