"""OpenTelemetry (`batch[otel]`): a run's trace and its metrics over OTLP/HTTP (protobuf), when the
standard variables ask for them (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the per-signal
`..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`). The only module that imports opentelemetry, lazily:
an install without the extra pays nothing, and says once what to install if the variable is set.

The trace is a span `batch.run` with the run's figures as attributes (never prompt text, never the
key) and a child span per phase (`phase`: passes, the Batch API's submit / wait / merge). The metrics
are those of the Prometheus textfile (`report.metrics.run_samples`), same names, labelled `job`.

Everything is kept in memory during the run and exported once, at its end (`finish`): nothing is sent
from the hot path, and the SDK's background threads and exit hooks are not used, so nothing is left
to flush or hang at exit. The two exports run side by side in daemon threads, each bounded by the
exporter's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, seconds; `DEFAULT_TIMEOUT_S` if unset) and joined
with a deadline: a collector that is down, slow or failing costs a few seconds and one warning, never
the run's outcome. The SDK itself reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the headers,
certificates and compression variables.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from batch.report.metrics import EXIT_CODE, HELP, LAST_RUN, LAST_SUCCESS, run_samples
from batch.report.summary import Summary

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Span

log = logging.getLogger("batch")

ANY, TRACES, METRICS = (f"OTEL_EXPORTER_OTLP_{s}ENDPOINT" for s in ("", "TRACES_", "METRICS_"))
TIMEOUTS = tuple(f"OTEL_EXPORTER_OTLP_{s}TIMEOUT" for s in ("", "TRACES_", "METRICS_"))
DEFAULT_TIMEOUT_S = 3.0  # the SDK's own default (10 s) is long to add to the end of every run
GRACE_S = 2.0  # beyond the export timeout: encoding, a thread's start
EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http"
_said_missing = False  # the missing extra is said once a process (a notebook may run many times)


def wanted(environ: Mapping[str, str]) -> tuple[bool, bool]:
    """(traces, metrics): which signals the environment asks for."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, False
    every = bool(environ.get(ANY))
    traces = (every or bool(environ.get(TRACES))) and environ.get("OTEL_TRACES_EXPORTER") != "none"
    metrics = (every or bool(environ.get(METRICS))) and environ.get("OTEL_METRICS_EXPORTER") != "none"
    return traces, metrics


class Telemetry:
    """One run's trace and metrics: `start` (None when not asked for), `phase`s, `finish` once."""

    def __init__(self, job: str, traces: bool, metrics: bool, timeout_s: float | None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.job, self.traces, self.metrics, self.timeout_s = job, traces, metrics, timeout_s
        resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "batch"}))
        self.resource = resource
        self.spans: InMemorySpanExporter = InMemorySpanExporter()
        # in memory, ended spans cost an append; no exit hook: `finish` exports, bounded in time
        self.provider: TracerProvider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.provider.get_tracer("batch")
        self.run_span: Span = self.tracer.start_span("batch.run", attributes={"batch.job": job})
        self.finished = False

    @classmethod
    def start(cls, job: str, environ: Mapping[str, str] | None = None) -> Telemetry | None:
        """A run's telemetry if the environment asks for it and the extra is installed, else None."""
        global _said_missing
        env = os.environ if environ is None else environ
        traces, metrics = wanted(env)
        if not (traces or metrics):
            return None
        try:
            import opentelemetry.exporter.otlp.proto.http
            import opentelemetry.sdk  # noqa: F401
        except ImportError:
            if not _said_missing:
                _said_missing = True
                log.warning('%s is set but OpenTelemetry is not installed: pip install "batch[otel]"',
                            next(v for v in (ANY, TRACES, METRICS) if env.get(v)))
            return None
        if env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: batch exports over http/protobuf only",
                        env["OTEL_EXPORTER_OTLP_PROTOCOL"])
        timeout = None if any(env.get(v) for v in TIMEOUTS) else DEFAULT_TIMEOUT_S
        return cls(job, traces, metrics, timeout)

    @contextmanager
    def phase(self, name: str, /, **figures: Any) -> Iterator[dict[str, Any]]:
        """A child span of the run: its name, and the figures given or put in the yielded dict."""
        from opentelemetry.trace import StatusCode, set_span_in_context

        span = self.tracer.start_span(name, context=set_span_in_context(self.run_span))
        try:
            yield figures  # its figures, set as the span ends
        except BaseException as exc:
            span.set_status(StatusCode.ERROR, type(exc).__name__)  # its type: a message may quote a server
            raise
        finally:
            span.set_attributes(figures)
            span.end()

    def finish(self, exit_code: int, summary: Summary | None, elapsed_s: float, *,
               model: str | None = None, mode: str | None = None) -> None:
        """The run span's figures, its end, and both exports, within a few seconds; one warning if an
        export fails. Never raises: monitoring must not change how the run ends."""
        if self.finished:
            return
        self.finished = True
        try:
            self._end_span(exit_code, summary, model, mode)
            jobs = [self._export_traces] if self.traces else []
            jobs += [lambda: self._export_metrics(exit_code, summary, elapsed_s)] if self.metrics else []
            problems = _run_bounded(jobs, (self.timeout_s or _env_timeout()) + GRACE_S)
        except Exception as exc:  # a broken SDK or exporter is one warning too
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            log.warning("OpenTelemetry: could not export to the collector (%s); the run is unaffected",
                        "; ".join(problems))

    def _end_span(self, code: int, s: Summary | None, model: str | None, mode: str | None) -> None:
        span = self.run_span
        figures: dict[str, Any] = {"batch.exit_code": code}
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
        span.set_attributes(figures)
        if code != 0:
            from opentelemetry.trace import StatusCode
            span.set_status(StatusCode.ERROR, f"exit code {code}")
        span.end()

    def _export_traces(self) -> str | None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        exporter = OTLPSpanExporter(timeout=self.timeout_s)
        try:
            result = exporter.export(self.spans.get_finished_spans())
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        return None if result == SpanExportResult.SUCCESS else "traces"

    def _export_metrics(self, code: int, s: Summary | None, elapsed_s: float) -> str | None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult

        reader = InMemoryMetricReader()
        provider = MeterProvider(resource=self.resource, metric_readers=[reader], shutdown_on_exit=False)
        _record(provider, self.job, code, s, elapsed_s)
        data = reader.get_metrics_data()
        provider.shutdown()
        exporter = OTLPMetricExporter(timeout=self.timeout_s)
        try:
            result = exporter.export(data) if data is not None else MetricExportResult.SUCCESS
        finally:
            exporter.shutdown()
        return None if result == MetricExportResult.SUCCESS else "metrics"


def _record(provider: MeterProvider, job: str, code: int, s: Summary | None, elapsed_s: float) -> None:
    """The textfile's samples, same names and labels; the ending's gauges as the run ends."""
    meter = provider.get_meter("batch")
    now = time.time()
    ending = {EXIT_CODE: float(code), LAST_RUN: now} | ({LAST_SUCCESS: now} if code == 0 else {})
    found = run_samples(s, elapsed_s) | {name: [({}, value)] for name, value in ending.items()}
    for name, samples in found.items():
        kind, text = HELP[name]
        if kind == "counter":
            counter = meter.create_counter(name, description=text)
            for labels, value in samples:
                counter.add(value, {"job": job, **labels})
        else:
            gauge = meter.create_gauge(name, description=text)
            for labels, value in samples:
                gauge.set(value, {"job": job, **labels})


def _run_bounded(jobs: list[Callable[[], str | None]], deadline_s: float) -> list[str]:
    """Each job in a daemon thread (one that never returns cannot hold the process at exit), all
    joined by one deadline; what failed, timed out or raised, by name."""
    results: dict[int, str | None] = {}
    quiet = _Quiet()

    def call(i: int, job: Callable[[], str | None]) -> None:
        try:
            results[i] = job()
        except Exception as exc:  # said in the one warning
            results[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=call, args=(i, job), daemon=True, name="batch-otel")
               for i, job in enumerate(jobs)]
    with quiet:
        for t in threads:
            t.start()
        end = time.monotonic() + deadline_s
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
    problems = [(p, t.ident) for i, t in enumerate(threads) if (p := results.get(i, "timed out")) is not None]
    return [p + (f": {quiet.last[ident]}" if ident in quiet.last else "") for p, ident in problems]


class _Quiet(logging.Handler):
    """The exporter's own log lines (an error per failed attempt) kept from stderr while it exports;
    each export's last one goes into the one warning instead."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: dict[int | None, str] = {}  # by thread: each export says its own
        self._logger, self._propagate = logging.getLogger(EXPORTER_LOGGER), True

    def emit(self, record: logging.LogRecord) -> None:
        self.last[record.thread] = record.getMessage()

    def __enter__(self) -> _Quiet:
        self._propagate = self._logger.propagate
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

def _env_timeout() -> float:
    values = [os.environ.get(v, "") for v in TIMEOUTS]
    return max((float(v) for v in values if v.replace(".", "", 1).isdigit()), default=DEFAULT_TIMEOUT_S)
