"""How a Python call is watched: its metrics file and its log lines, from `metrics_file=` and
`log_format=` or the job file's `[run]` table — read before the call is validated, so that a refused
call still records its exit code (2) in the metrics file it named, and in a trace when the OTEL_*
variables ask for one.

A call without a job file is labelled `job="python"` (`metrics.PYTHON_JOB`); with one, by its stem,
as on the command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from batch.errors import BatchError
from batch.job.watch import Watch, watch_of
from batch.report.logs import stderr_handler
from batch.report.metrics import PYTHON_JOB, MetricsFile
from batch.report.otel import Telemetry
from batch.send.client import MIN_SECRET


def job_name(job_file: str | Path | None) -> str:
    return Path(job_file).stem if job_file is not None else PYTHON_JOB


def watch(job_file: str | Path | None, options: Mapping[str, Any]) -> Watch:
    """The options over the job file's [run] table; relative paths start where the job's do (beside
    the job file, else the working directory)."""
    base = watch_of(Path(job_file)) if job_file is not None else Watch()
    where = Path(job_file).resolve().parent if job_file is not None else Path.cwd()
    path, fmt = options.get("metrics_file"), options.get("log_format")
    return Watch(metrics_file=(where / path).resolve() if isinstance(path, str | Path) and str(path).strip()
                 else base.metrics_file,
                 log_format="json" if isinstance(fmt, str) and fmt.lower() == "json" else
                 base.log_format if fmt is None else "text")


def metrics_file(job_file: str | Path | None, options: Mapping[str, Any]) -> MetricsFile | None:
    path = watch(job_file, options).metrics_file
    return MetricsFile(path, job_name(job_file)) if path is not None else None


@contextlib.contextmanager
def refused(metrics: MetricsFile | None, job: str) -> Iterator[None]:
    """A call that ends in a BatchError before its run could record its ending (`drive` does, once it
    runs) records its exit code: in the metrics file (the last success time kept), and as a trace of
    the run span alone when OpenTelemetry is asked for. `job`: the label, as the metrics file's."""
    try:
        yield
    except BatchError as exc:
        if not exc.recorded:
            exc.recorded = True
            if metrics is not None:
                metrics.finish(exc.exit_code, None, 0.0)
            _traced(job, exc.exit_code)
        raise


def _traced(job: str, exit_code: int) -> None:
    """A refused job as a trace, when the environment asks for one: the run span alone with its exit
    code, and the metrics' ending (no counts), as the textfile records it. Never raises (`finish`
    says a failed export in one warning)."""
    telemetry = Telemetry.start(job, early=False)
    if telemetry is not None:
        telemetry.finish(exit_code, None, 0.0)


def show_log_lines(log_format: str, job: str) -> None:
    """Log lines reach the caller when nothing else was set up to show them (a plain script): text or
    JSON lines, the key blotted out."""
    logger = logging.getLogger("batch")
    if not logger.handlers and not logging.getLogger().handlers:
        key = os.environ.get("GROQ_API_KEY") or ""
        logger.addHandler(stderr_handler(log_format, job, key if len(key) >= MIN_SECRET else None))
        logger.setLevel(logging.INFO)
