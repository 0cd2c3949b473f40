"""The run's Prometheus textfile (`--metrics-file`, `[run] metrics-file`), for node_exporter's textfile
collector: what this run did, how the last run ended, and when the job last succeeded.

Every sample is labelled `job` (the job file's stem). The counts are this run's: a new run starts them
again from 0, which Prometheus reads as a counter reset. `batch_last_success_timestamp_seconds` is
carried over from the file as it was when the run started unless this run succeeded (exit 0); during a
run, the last run's exit code and time are carried over too, so an alert on them does not flap.

The text format is written here rather than with prometheus-client: it is a few lines of HELP, TYPE
and samples, and the library would be one more dependency of every install for one small file. The
figures are the run's `Summary` (built from `RunStats`, which the run counts anyway): nothing here
adds work per request.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

from batch.report.summary import Summary

log = logging.getLogger("batch")

EXIT_CODE, LAST_RUN, LAST_SUCCESS = ("batch_last_run_exit_code", "batch_last_run_timestamp_seconds",
                                     "batch_last_success_timestamp_seconds")
# name -> (type, help), in the order written
HELP: dict[str, tuple[str, str]] = {
    "batch_rows_total": ("counter", "Rows of this run by outcome: answered by this run's requests, failed "
                         "(their output row has an error), from_store (an earlier run's answer)."),
    "batch_requests_total": ("counter", "HTTP requests sent by this run, retries included."),
    "batch_http_429_total": ("counter", "Rate-limited (HTTP 429) answers this run received."),
    "batch_tokens_total": ("counter", "Tokens this run was billed for, by kind (cached: of the input)."),
    "batch_cost_usd_total": ("counter", "This run's estimated cost in USD at the model's list price."),
    "batch_run_duration_seconds": ("gauge", "How long this run has been going, or took."),
    EXIT_CODE: ("gauge", "The last finished run's exit code: 0 done, 1 failed rows, 2 refused job, "
                "3 stopped (resumable), 4 fatal API error."),
    LAST_RUN: ("gauge", "When the last run finished (Unix time)."),
    LAST_SUCCESS: ("gauge", "When a run of this job last finished with exit code 0 (Unix time)."),
}
CARRIED = (EXIT_CODE, LAST_RUN, LAST_SUCCESS)
PYTHON_JOB = "python"  # the `job` label of a Python call without a job file


class MetricsFile:
    """One job's textfile: `update` during a run, `finish` once at its end (whatever the end)."""

    def __init__(self, path: Path, job: str) -> None:
        self.path, self.job = path, job
        self.finished = False
        self._label = f'{{job="{_escape(job)}"}}'
        self._carried = _previous(path, self._label)  # what the file said before this run
        self._warned = False

    def update(self, summary: Summary | None, elapsed_s: float) -> None:
        """The run so far (`summary` None: nothing to count yet); the last run's ending carried over."""
        if not self.finished:
            self._write(summary, elapsed_s, self._carried)

    def finish(self, exit_code: int, summary: Summary | None, elapsed_s: float) -> None:
        """The run's end: its counts, its exit code, and the success time if it succeeded."""
        if self.finished:
            return
        self.finished = True
        self._write(summary, elapsed_s, ending(exit_code, self._carried.get(LAST_SUCCESS)))

    def _write(self, summary: Summary | None, elapsed_s: float, ending: dict[str, float]) -> None:
        try:
            replace_atomically(self.path, self.render(summary, elapsed_s, ending))
        except OSError as exc:  # monitoring must never fail the run it watches: say it once
            if not self._warned:
                self._warned = True
                log.warning("could not write the metrics file %s: %s", self.path, exc)

    def render(self, summary: Summary | None, elapsed_s: float, ending: dict[str, float]) -> str:
        samples = {name: [(_labels(labels), value) for labels, value in found]
                   for name, found in run_samples(summary, elapsed_s).items()}
        samples.update({name: [("", ending[name])] for name in CARRIED if name in ending})
        lines = []
        for name, (kind, text) in HELP.items():
            if name not in samples:
                continue
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in samples[name]:
                lab = self._label if not labels else self._label[:-1] + "," + labels + "}"
                lines.append(f"{name}{lab} {_number(value)}")
        return "\n".join(lines) + "\n"


Sample = tuple[dict[str, str], float]  # (labels beside `job`, value)


def ending(exit_code: int, last_success: float | None = None) -> dict[str, float]:
    """How a run ended, as its gauges: the exit code, when, and when the job last succeeded (now if
    this run did, else `last_success`, what was known of it: none, none is said)."""
    now = time.time()
    success = now if exit_code == 0 else last_success
    said = {EXIT_CODE: float(exit_code), LAST_RUN: now}
    return said | ({LAST_SUCCESS: success} if success is not None else {})


def run_samples(summary: Summary | None, elapsed_s: float) -> dict[str, list[Sample]]:
    """This run's figures by metric name (`summary` None: nothing counted yet), the exit code and the
    times aside; the one definition the textfile and OpenTelemetry (`report.otel`) both export."""
    s = summary
    from_store = s.rows_from_store if s else 0
    earlier_failed = s.rows_from_store_failed if s else 0
    return {
        "batch_rows_total": [
            ({"outcome": "answered"}, max(0, s.rows_ok - (from_store - earlier_failed)) if s else 0),
            ({"outcome": "failed"}, max(0, s.rows_failed - earlier_failed) if s else 0),
            ({"outcome": "from_store"}, from_store)],
        "batch_requests_total": [({}, s.requests_sent if s else 0)],
        "batch_http_429_total": [({}, s.rate_limited_429 if s else 0)],
        "batch_tokens_total": [({"kind": "input"}, s.input_tokens if s else 0),
                               ({"kind": "output"}, s.output_tokens if s else 0),
                               ({"kind": "cached"}, s.cached_tokens if s else 0)],
        # an unknown price (a model batch has no price for) is no sample rather than a made-up 0
        "batch_cost_usd_total": [] if s and s.estimated_cost_usd is None else [
            ({}, (s.estimated_cost_usd or 0.0) if s else 0.0)],
        "batch_run_duration_seconds": [({}, round(elapsed_s, 3))],
    }


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def replace_atomically(path: Path, text: str) -> None:
    """`path` holds `text`, or what it held before: never half a file for the collector to read. The
    temporary file is in the same folder (a rename is atomic only within a file system), and its name
    does not end in .prom, so the collector never reads it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


_SAMPLE = re.compile(r"^(\w+)(\{.*\})?\s+(\S+)")


def _previous(path: Path, label: str) -> dict[str, float]:
    """The carried-over samples of this job in the file as it is (none if it is absent or unreadable)."""
    found: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return found
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m[1] in CARRIED and (m[2] or "") == label:
            try:
                value = float(m[3])
            except ValueError:
                continue
            if math.isfinite(value):
                found[m[1]] = value
    return found


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))
