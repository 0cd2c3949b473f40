"""A partitioned input, one partition at a time: the engine run per partition, its part published.

    partition ─► fetched (local file) ─► Run (journal: <state>/part-NNNNN.sqlite, output staged in
    <state>) ─► published to <output>/part-NNNNN.parquet ─► done marker (<state>/part-NNNNN.done)

A part whose done marker matches (same input file version, same task, same output) is not run again:
a resumed or repeated run only runs the parts that are missing or changed, and every partition's
journal means a part cut short is resumed, not paid twice. `PartitionedRun` runs the parts one after
the other on this machine, sharing one pacer; the cluster runner (`batch.cluster`) runs the same
`run_part` on Dask workers, with a pacer that leases from one limiter for the whole cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from batch.dataset import partitions
from batch.dataset.partitions import Partition
from batch.dataset.summary import PartOutcome, finish
from batch.engine.online import local_pacer
from batch.engine.preflight import check_job, check_model
from batch.engine.run import Run, RunOptions
from batch.errors import BatchError, FatalApiError, JobError, Stopped
from batch.job.config import Job, StateSpec
from batch.job.endpoint import Endpoint
from batch.report.summary import Summary
from batch.send.pacing import Pacing

log = logging.getLogger("batch")


def part_job(job: Job, part: Partition) -> Job:
    """The one-file job of a partition: its input fetched locally, output staged beside its journal."""
    state = job.state.path
    return replace(job, input=replace(job.input, path=partitions.fetch(part, state / "inputs"),
                                      format=part.format, dataset=None),
                   output=replace(job.output, path=state / part.name, format="parquet", dataset=None),
                   state=StateSpec(state / part.name.replace(".parquet", ".sqlite")))


def _digest(job: Job, part: Partition) -> str:
    what = {"input": [part.location, part.version], "output": job.output.dataset,
            "text": job.output.text_column, "task": asdict(job.task)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def done_marker(job: Job, part: Partition) -> Path:
    return job.state.path / part.name.replace(".parquet", ".done")


def already_done(job: Job, part: Partition) -> PartOutcome | None:
    """The outcome of an earlier run that wrote this very part, if it still stands."""
    try:
        mark = json.loads(done_marker(job, part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    assert job.output.dataset is not None
    if mark.get("digest") != _digest(job, part) or not partitions.published(job.output.dataset, part.name):
        return None
    return PartOutcome(part.index, "skipped", mark.get("summary"))


async def run_part(job: Job, part: Partition, endpoint: Endpoint, opts: RunOptions,
                   on_run: Callable[[Run], None] | None = None) -> PartOutcome:
    """Run one partition through the engine and publish its part; raises what `Run` raises."""
    done = already_done(job, part)
    if done is not None:
        return done
    pjob = part_job(job, part)
    rows = check_job(pjob)
    run = Run(pjob, rows, endpoint, opts)
    if on_run is not None:
        on_run(run)
    summary = await run.execute()
    assert job.output.dataset is not None
    try:
        partitions.publish(pjob.output.path, job.output.dataset, part.name)
    except Exception as exc:  # a disk, a bucket: the answers are all in the journal
        raise Stopped(f"could not write {part.name} to {job.output.dataset}: {type(exc).__name__}: {exc}. "
                      "Every answer is saved; fix this and run the same command again.") from None
    pjob.output.path.unlink(missing_ok=True)  # published; the journal keeps every answer
    result = json.loads(summary.to_json())
    marker = done_marker(job, part)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"digest": _digest(job, part), "summary": result}), encoding="utf-8")
    tmp.replace(marker)
    log.info("part %s: %s (%d rows)", part.name, summary.status, summary.rows)
    return PartOutcome(part.index, summary.status, result)


def stopped_outcome(part: Partition, exc: BatchError, run: Run | None) -> PartOutcome:
    """A part that ended with an exception, as an outcome (what it sent is still counted)."""
    status = "fatal" if isinstance(exc, FatalApiError) else "stopped" if isinstance(exc, Stopped) else \
        "invalid"
    summary = None
    if run is not None:
        summary = json.loads(Summary.build(run.stats, status=status, model=run.job.task.model, rows=0,
                                           rows_ok=run.stats.answered, rows_failed=run.stats.failed,
                                           rows_from_store=0, output=None, message=str(exc)).to_json())
    return PartOutcome(part.index, status, summary, str(exc))


def refuse_limit(opts: RunOptions) -> None:
    if opts.limit is not None:
        raise JobError("--limit is not available for a partitioned input; to try a few rows, point "
                       "[input] path at one of its files")


class PartitionedRun:
    """A partitioned job on this machine: the parts in order, one pacer shared by all of them."""

    def __init__(self, job: Job, endpoint: Endpoint, opts: RunOptions) -> None:
        self.job, self.endpoint, self.opts = job, endpoint, opts
        self._run: Run | None = None
        self.interrupted = False
        self.summary: Summary | None = None

    def interrupt(self) -> None:
        self.interrupted = True
        if self._run is not None:
            self._run.interrupt()

    def _hold(self, run: Run) -> None:
        self._run = run
        if self.interrupted:
            run.interrupt()

    def _finish(self, outcomes: list[PartOutcome], total: int, started: float) -> Summary:
        self.summary = finish(self.job, outcomes, total=total, started=started)
        return self.summary

    async def execute(self) -> Summary:
        job, endpoint, started = self.job, self.endpoint, time.monotonic()
        refuse_limit(self.opts)
        assert job.input.dataset is not None
        parts = partitions.list_partitions(job.input.dataset, job.input.format or None)
        assert job.output.dataset is not None
        partitions.check_output(job.output.dataset)
        for part in parts:  # every partition is checked before the first request
            if already_done(job, part) is None:
                check_job(part_job(job, part))
        if not endpoint.simulated:
            await check_model(job, endpoint.base_url, endpoint.key)
        shared: list[Pacing] = []

        def pacer(ep: Endpoint, limits: Any) -> Pacing:
            if not shared:
                shared.append(local_pacer(ep, limits))
            return shared[0]

        opts = replace(self.opts, pacer=pacer, model_checked=True)
        log.info("run: %d partitions of %s -> %s", len(parts), job.input.dataset, job.output.dataset)
        outcomes = []
        for part in parts:
            try:
                outcomes.append(await run_part(job, part, endpoint, opts, on_run=self._hold))
            except (Stopped, FatalApiError) as exc:
                outcomes.append(stopped_outcome(part, exc, self._run))
                self._finish(outcomes, len(parts), started)
                raise
            finally:
                self._run = None
            if self.interrupted:
                exc2 = Stopped("interrupted; finished parts are written and answers so far are saved. Run "
                               "the same command again to resume.")
                self._finish(outcomes, len(parts), started)
                raise exc2
        return self._finish(outcomes, len(parts), started)
