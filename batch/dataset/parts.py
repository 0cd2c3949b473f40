"""A partitioned input, one partition at a time: the engine run per partition, its part published.

    partition ─► fetched (local file) ─► Run (journal: <state>/part-NNNNN.sqlite, output staged in
    <state>) ─► published to <output>/part-NNNNN.parquet ─► done marker (<state>/part-NNNNN.done)

A part whose done marker matches (same input file version, same task, same output) is not run again:
a resumed or repeated run only runs the parts that are missing or changed, and every partition's
journal means a part cut short is resumed, not paid twice. Before anything is sent the partitions are
checked, and must agree on their columns (`agree`). `local.PartitionedRun` runs the parts one after
the other on this machine, sharing one pacer and one spend cap; the cluster runner (`batch.cluster`) runs
the same `run_part` on Dask workers, with a pacer and a spend cap that lease from one limiter for the
whole cluster. Every engine run of a part is named by the run's token, so that a part done again
after its worker was lost counts what the lost attempt bought as this run's (`bought`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from batch.dataset import partitions
from batch.dataset.agree import Found, check_agree, check_part, columns_of, from_json, part_name
from batch.dataset.bought import Bought, bought_before, counted
from batch.dataset.partitions import Partition
from batch.dataset.summary import PartOutcome
from batch.engine.preflight import check_job
from batch.engine.run import Run, RunOptions
from batch.errors import BatchError, FatalApiError, JobError, Stopped
from batch.job.config import Job, StateSpec
from batch.job.endpoint import Endpoint

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


def _marker(job: Job, part: Partition) -> dict[str, Any] | None:
    """The done marker of an earlier run that wrote this very part, if it still stands."""
    try:
        mark = json.loads(done_marker(job, part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    assert job.output.dataset is not None
    if mark.get("digest") != _digest(job, part) or not partitions.published(job.output.dataset, part.name):
        return None
    return dict(mark)


def already_done(job: Job, part: Partition) -> PartOutcome | None:
    """The outcome of an earlier run that wrote this very part, if it still stands."""
    mark = _marker(job, part)
    return None if mark is None else PartOutcome(part.index, "skipped", mark.get("summary"))


def check_partitions(job: Job, parts: list[Partition], *, every: bool = True) -> Found | None:
    """Before anything is sent: the partitions to run are checked (`every` one, or the first: a
    remote dataset on a cluster), and they and the parts already written must agree on their columns.
    Returns the columns a part checked later (on a worker) is held to."""
    assert job.input.dataset is not None
    found: list[Found] = []
    checked = False
    for part in parts:
        name = part_name(part.location, job.input.dataset)
        mark = _marker(job, part)
        if mark is not None:
            columns = from_json(mark.get("columns"))
            if columns is not None:
                found.append((name, columns))
        elif every or not checked:
            found.append((name, columns_of(check_job(part_job(job, part)))))
            checked = True
    check_agree(found, job.input.dataset)
    return found[0] if found else None


@dataclass
class Attempt:
    """One attempt at a partition, as its caller sees it: `started` hears of the engine run (to
    interrupt it), which stays here with what earlier attempts of the same run bought, for the report
    of a part that stops."""

    started: Callable[[Run], None] | None = None
    run: Run | None = None
    bought: Bought | None = None


async def run_part(job: Job, part: Partition, endpoint: Endpoint, opts: RunOptions,
                   attempt: Attempt | None = None, expect: Found | None = None) -> PartOutcome:
    """Run one partition through the engine and publish its part; raises what `Run` raises. `expect`:
    the columns it must have (a part not checked before the run, of a remote dataset)."""
    done = already_done(job, part)
    if done is not None:
        return done
    attempt = attempt or Attempt()
    assert job.input.dataset is not None
    pjob = part_job(job, part)
    rows = check_job(pjob)
    columns = columns_of(rows)
    check_part(expect, (part_name(part.location, job.input.dataset), columns), job.input.dataset)
    attempt.bought = bought_before(pjob.state.path, opts.run_token)
    run = attempt.run = Run(pjob, rows, endpoint, opts)
    if attempt.started is not None:
        attempt.started(run)
    summary = await run.execute()
    assert job.output.dataset is not None
    try:
        partitions.publish(pjob.output.path, job.output.dataset, part.name)
    except Exception as exc:  # a disk, a bucket: the answers are all in the journal
        raise Stopped(f"could not write {part.name} to {job.output.dataset}: {partitions.trouble(exc)}. "
                      "Every answer is saved; fix this and run the same command again.") from None
    pjob.output.path.unlink(missing_ok=True)  # published; the journal keeps every answer
    result = counted(json.loads(summary.to_json()), attempt.bought, job.task.model)
    marker = done_marker(job, part)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"digest": _digest(job, part), "summary": result, "columns": columns}),
                   encoding="utf-8")
    tmp.replace(marker)
    log.info("part %s: %s (%d rows)", part.name, summary.status, summary.rows)
    return PartOutcome(part.index, summary.status, result)


def part_so_far(attempt: Attempt, status: str = "running",
                message: str | None = None) -> dict[str, Any] | None:
    """What an attempt's engine run has done so far, as a part's report (answers received as rows ok,
    what earlier attempts of the run bought counted in); None before its run started."""
    run = attempt.run
    if run is None:
        return None
    return counted(json.loads(run.so_far(status, message).to_json()), attempt.bought, run.job.task.model,
                   stopped=True)


def stopped_outcome(part: Partition, exc: BatchError, attempt: Attempt) -> PartOutcome:
    """A part that ended with an exception, as an outcome (what it sent is still counted)."""
    status = "fatal" if isinstance(exc, FatalApiError) else "stopped" if isinstance(exc, Stopped) else \
        "invalid"
    return PartOutcome(part.index, status, part_so_far(attempt, status, str(exc)), str(exc))


def refuse_limit(opts: RunOptions) -> None:
    if opts.limit is not None:
        raise JobError("--limit is not available for a partitioned input; to try a few rows, point "
                       "[input] path at one of its files")
