"""The OTLP exporter's own process: `python -m batch.report.otlp`, started by `report.otel` as a run
begins; the run's trace and metrics arrive as one JSON document on stdin as it ends. The only module
that imports OpenTelemetry (the SDK and its OTLP/HTTP exporter, `batch[otel]`).

Why a process of its own: the SDK, protobuf and `requests` (about 6 MB, and 30 ms to import) never load
into the run's process, where they would sit on top of its peak memory and stay in a notebook's kernel
after the call; and an exporter that hangs is ended by its parent at the deadline, not left as a
thread. It reads nothing of the run but stdin, and imports nothing of batch's; started with the run,
it has loaded the SDK (~0.2 s) long before the document comes.

The spans are made again with the times the run recorded (`start_time`, `end_time`), the run's span
the parent of every phase; the metrics are the textfile's samples, as the run computed them. Both
exports run side by side, each bounded by the exporter's timeout, and stdout gets one JSON line: the
problems, by name (`{"problems": []}` when both were accepted). The SDK reads the standard variables
(endpoints, headers, certificates, compression, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http"


def main() -> int:
    # The run starts this process as it begins, and writes the document as it ends: the imports are
    # done meanwhile. A run that ends without writing (its process killed) closes the pipe: nothing.
    # A stop signal is the run's to act on (it exports how it stopped); its parent ends this process
    # at the deadline, or closes the pipe.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    import opentelemetry.exporter.otlp.proto.http.metric_exporter
    import opentelemetry.exporter.otlp.proto.http.trace_exporter
    import opentelemetry.sdk.metrics
    import opentelemetry.sdk.trace  # noqa: F401

    text = sys.stdin.buffer.read()
    if not text:
        return 0
    doc: dict[str, Any] = json.loads(text)
    problems = export(doc)
    sys.stdout.write(json.dumps({"problems": problems}) + "\n")
    sys.stdout.flush()
    return 0


def export(doc: dict[str, Any]) -> list[str]:
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "batch"}))
    timeout: float | None = doc["timeout_s"]
    jobs: list[Callable[[], str | None]] = []
    if doc["traces"]:
        jobs.append(lambda: _export_traces(resource, doc["spans"], timeout))
    if doc["metrics"]:
        jobs.append(lambda: _export_metrics(resource, doc["job"], doc["samples"], doc["help"], timeout))
    return _run_bounded(jobs, doc["deadline_s"])


def _export_traces(resource: Any, spans: list[dict[str, Any]], timeout: float | None) -> str | None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode, set_span_in_context

    kept = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("batch")
    run, *phases = spans  # the run's span first, its phases after it in the order they began
    root = tracer.start_span(run["name"], attributes=run["attributes"], start_time=run["start_ns"])
    for p in phases:
        span = tracer.start_span(p["name"], context=set_span_in_context(root), attributes=p["attributes"],
                                 start_time=p["start_ns"])
        if p["error"]:
            span.set_status(StatusCode.ERROR, p["error"])
        span.end(end_time=p["end_ns"])
    if run["error"]:
        root.set_status(StatusCode.ERROR, run["error"])
    root.end(end_time=run["end_ns"])
    exporter = OTLPSpanExporter(timeout=timeout)
    try:
        result = exporter.export(kept.get_finished_spans())
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    return None if result == SpanExportResult.SUCCESS else "traces"


def _export_metrics(resource: Any, job: str, samples: dict[str, list[list[Any]]],
                    help_: dict[str, list[str]], timeout: float | None) -> str | None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult

    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    meter = provider.get_meter("batch")
    for name, found in samples.items():  # the textfile's samples: same names and labels
        kind, text = help_[name]
        if kind == "counter":
            counter = meter.create_counter(name, description=text)
            for labels, value in found:
                counter.add(value, {"job": job, **labels})
        else:
            gauge = meter.create_gauge(name, description=text)
            for labels, value in found:
                gauge.set(value, {"job": job, **labels})
    data = reader.get_metrics_data()
    provider.shutdown()
    exporter = OTLPMetricExporter(timeout=timeout)
    try:
        result = exporter.export(data) if data is not None else MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    return None if result == MetricExportResult.SUCCESS else "metrics"


def _run_bounded(jobs: list[Callable[[], str | None]], deadline_s: float) -> list[str]:
    """Each job in a daemon thread, all joined by one deadline; what failed, timed out or raised,
    by name, with the exporter's last log line about it."""
    results: dict[int, str | None] = {}
    quiet = _Quiet()

    def call(i: int, job: Callable[[], str | None]) -> None:
        try:
            results[i] = job()
        except Exception as exc:  # said in the parent's one warning
            results[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=call, args=(i, job), daemon=True, name="batch-otlp")
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
    each export's last one goes into the problems instead."""

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


if __name__ == "__main__":
    code = main()
    os._exit(code)  # an exporter thread past its deadline must not hold the process at exit
