"""OpenTelemetry (`batch[otel]`): a run's trace and its metrics over OTLP/HTTP (protobuf), when the
standard variables ask for them (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the per-signal
`..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`).

The trace is a span `batch.run` with the run's figures as attributes (never prompt text, never the
key) and a child span per phase (`phase`: passes, the Batch API's submit / wait / merge). The metrics
are those of the Prometheus textfile (`report.metrics.run_samples`), same names, labelled `job`.

During the run, nothing of OpenTelemetry's is loaded: a phase is a name, two clock readings and its
figures, kept here. The exporter's own process (`report.otlp`, which owns the SDK) starts with the run
and loads the SDK meanwhile; at the run's end (`finish`), the spans and samples go to it as one JSON
document on its stdin. Its modules never add to the run's memory, and an exporter that hangs is ended
at the deadline instead of being left behind as a thread (in a notebook's kernel, for one). The wait
is bounded: the exporter's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, seconds; `DEFAULT_TIMEOUT_S` if
unset) plus the process's start. A collector that is down, slow or failing costs a few seconds and
one warning, never the run's outcome.
An install without the extra pays nothing, and says once what to install if the variable is set.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from batch.report import child
from batch.report.metrics import HELP, ending, run_samples
from batch.report.phases import Figure
from batch.report.summary import Summary

log = logging.getLogger("batch")

ANY, TRACES, METRICS = (f"OTEL_EXPORTER_OTLP_{s}ENDPOINT" for s in ("", "TRACES_", "METRICS_"))
TIMEOUTS = tuple(f"OTEL_EXPORTER_OTLP_{s}TIMEOUT" for s in ("", "TRACES_", "METRICS_"))
DEFAULT_TIMEOUT_S = 3.0  # the SDK's own default (10 s) is long to add to the end of every run
GRACE_S = 2.0  # beyond the export timeout: encoding, a thread's start
START_S = 3.0  # beyond that: the exporter's process finishing its start, if the run was shorter
_said_missing = False  # the missing extra is said once a process (a notebook may run many times)


def wanted(environ: Mapping[str, str]) -> tuple[bool, bool]:
    """(traces, metrics): which signals the environment asks for."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, False
    every = bool(environ.get(ANY))
    traces = (every or bool(environ.get(TRACES))) and environ.get("OTEL_TRACES_EXPORTER") != "none"
    metrics = (every or bool(environ.get(METRICS))) and environ.get("OTEL_METRICS_EXPORTER") != "none"
    return traces, metrics


def installed() -> bool:
    """Whether the extra is there, found without importing it (the exporter's process does that)."""
    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))
    except (ImportError, ValueError):  # a parent package that cannot be imported: not usable either
        return False


@dataclass
class Span:
    """A span as the exporter's process makes it again: times in Unix nanoseconds."""

    name: str
    start_ns: int
    attributes: dict[str, Figure] = field(default_factory=dict)
    end_ns: int = 0
    error: str | None = None  # the status's description when the span failed


class Telemetry:
    """One run's trace and metrics: `start` (None when not asked for), `phase`s, `finish` once."""

    def __init__(self, job: str, traces: bool, metrics: bool, timeout_s: float | None, *,
                 early: bool = True) -> None:
        self.job, self.traces, self.metrics, self.timeout_s = job, traces, metrics, timeout_s
        self.run_span = Span("batch.run", time.time_ns(), {"batch.job": job})
        self.phases: list[Span] = []
        self.finished = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawn_error: str | None = None
        if early:  # else when the run ends: a Batch API run may wait for hours, the process idle
            self._spawn()

    def _spawn(self) -> None:
        """The exporter's process. Started with the run, its interpreter and the SDK's imports are
        done by the time the run ends (on the other core, while this one works): then only the
        export is left to wait for."""
        try:
            self._proc = child.spawn("batch.report.otlp")  # a session of its own (see `child`)
        except OSError as exc:  # no interpreter to start (an embedded one): said once, at the end
            self._spawn_error = f"the exporter's process could not start: {exc}"

    @classmethod
    def start(cls, job: str, environ: Mapping[str, str] | None = None, *,
              early: bool = True) -> Telemetry | None:
        """A run's telemetry if the environment asks for it and the extra is installed, else None.
        `early`: start the exporter's process now (False: as the run ends)."""
        global _said_missing
        env = os.environ if environ is None else environ
        traces, metrics = wanted(env)
        if not (traces or metrics):
            return None
        if not installed():
            if not _said_missing:
                _said_missing = True
                log.warning('%s is set but OpenTelemetry is not installed: pip install "batch[otel]"',
                            next(v for v in (ANY, TRACES, METRICS) if env.get(v)))
            return None
        if env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: batch exports over http/protobuf only",
                        env["OTEL_EXPORTER_OTLP_PROTOCOL"])
        timeout = None if any(env.get(v) for v in TIMEOUTS) else DEFAULT_TIMEOUT_S
        return cls(job, traces, metrics, timeout, early=early)

    @contextmanager
    def phase(self, name: str, /, **figures: Figure) -> Iterator[dict[str, Figure]]:
        """A child span of the run: its name, and the figures given or put in the yielded dict."""
        span = Span(name, time.time_ns())
        self.phases.append(span)
        try:
            yield figures  # its figures, set as the span ends
        except BaseException as exc:
            span.error = type(exc).__name__  # its type: a message may quote a server
            raise
        finally:
            span.attributes = dict(figures)
            span.end_ns = time.time_ns()

    def finish(self, exit_code: int, summary: Summary | None, elapsed_s: float, *,
               model: str | None = None, mode: str | None = None) -> None:
        """The run span's figures, its end, and both exports, within a few seconds; one warning if an
        export fails. Never raises: monitoring must not change how the run ends."""
        if self.finished:
            return
        self.finished = True
        try:
            self._end_span(exit_code, summary, model, mode)
            problems = self._export(self._document(exit_code, summary, elapsed_s))
        except Exception as exc:  # a broken install or a process that cannot start is one warning too
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            log.warning("OpenTelemetry: could not export to the collector (%s); the run is unaffected",
                        "; ".join(problems))

    def _end_span(self, code: int, s: Summary | None, model: str | None, mode: str | None) -> None:
        figures: dict[str, Figure] = {"batch.exit_code": code}
        if s is not None:
            figures |= {"batch.model": s.model, "batch.mode": s.mode, "batch.status": s.status}
        else:
            figures |= {k: v for k, v in (("batch.model", model), ("batch.mode", mode)) if v}
        for name, found in run_samples(s, 0.0).items():
            short = name.removeprefix("batch_").removesuffix("_total")  # batch.tokens.input, batch.requests
            if name in ("batch_rows_total", "batch_tokens_total"):
                figures |= {f"batch.{short}.{next(iter(labels.values()))}": value for labels, value in found}
            elif name != "batch_run_duration_seconds":
                figures |= {f"batch.{short}": value for _, value in found}
        self.run_span.attributes |= figures
        self.run_span.error = f"exit code {code}" if code != 0 else None
        self.run_span.end_ns = time.time_ns()

    def _document(self, code: int, s: Summary | None, elapsed_s: float) -> dict[str, Any]:
        """What the exporter's process needs, and nothing else: no row text, no key."""
        samples = run_samples(s, elapsed_s) | {name: [({}, value)] for name, value in ending(code).items()}
        timeout = self.timeout_s or env_timeout()
        return {"traces": self.traces, "metrics": self.metrics, "job": self.job,
                "timeout_s": self.timeout_s, "deadline_s": timeout + GRACE_S,
                "spans": [asdict(self.run_span)] + [asdict(p) for p in self.phases],
                "samples": samples, "help": {name: HELP[name] for name in samples}}

    def _export(self, doc: dict[str, Any]) -> list[str]:
        """Hand `doc` to the exporter's process; its problems, or why it did not answer in time."""
        if self._proc is None and self._spawn_error is None:
            self._spawn()
        proc = self._proc
        if proc is None:
            return [self._spawn_error or "the exporter's process did not start"]
        deadline = float(doc["deadline_s"]) + START_S
        try:
            out, err = child.ask(proc, json.dumps(doc).encode(), deadline, "the exporter's process")
        except child.HelperFailed as exc:
            return [str(exc)]
        try:
            return [str(p) for p in json.loads(out)["problems"]]
        except (ValueError, KeyError, TypeError):
            return [f"the exporter ended with code {proc.returncode}: {child.last_line(err)}"]


def env_timeout() -> float:
    values = [os.environ.get(v, "") for v in TIMEOUTS]
    return max((float(v) for v in values if v.replace(".", "", 1).isdigit()), default=DEFAULT_TIMEOUT_S)
