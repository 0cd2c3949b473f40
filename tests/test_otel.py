"""OpenTelemetry (`batch[otel]`), read back as a collector reads it: an OTLP/HTTP receiver in the test.

A run of the command line with OTEL_EXPORTER_OTLP_ENDPOINT set sends a trace (the run span, its passes
and the Batch API's submit, wait and merge as children) and the metrics of the Prometheus textfile,
equal to the run report's figures; no prompt text and no key in any body. A refused job is a trace
too: the run span alone, with exit code 2. A collector that is down, never answers or answers 500
leaves the run's exit code as it was, and costs one warning line. Without the extra, one line says
what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from conftest import HANG_GUARD_S, MODEL, BackgroundLoop, cli_env, serve_app, wait_until
from nasty import write_csv
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from batch.sim import Simulator

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
Points = dict[tuple[str, tuple[tuple[str, str], ...]], float]

PROMPT = "Rewrite for ${name}:\n${experience}"
SECRET_TEXT = "otel experience number"  # in every row's prompt: never in a body


@dataclass
class Receiver:
    """An OTLP/HTTP collector: what it was sent, and how it answers (`mode`: ok, 500 or hang)."""

    mode: str = "ok"
    bodies: dict[str, list[bytes]] = field(default_factory=lambda: {"traces": [], "metrics": []})
    release: asyncio.Event | None = None  # set at teardown: a hanging answer then ends

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies[request.path.rsplit("/", 1)[-1]].append(body)
        if self.mode == "hang":
            assert self.release is not None
            await self.release.wait()
        if self.mode == "500":
            return web.Response(status=500, text="collector is broken")
        return web.Response(body=b"", content_type="application/x-protobuf")  # an empty Export*Response


@pytest.fixture
def receiver(background_loop: BackgroundLoop) -> Iterator[tuple[str, Receiver]]:
    """A receiver on a loopback port: (base URL for OTEL_EXPORTER_OTLP_ENDPOINT, receiver)."""
    got = Receiver()

    async def start() -> str:
        got.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/traces", got.handle)
        app.router.add_post("/v1/metrics", got.handle)
        return await serve_app(web.AppRunner(app, shutdown_timeout=1.0))

    url = background_loop.run(start())
    yield url, got
    assert got.release is not None
    background_loop.loop.call_soon_threadsafe(got.release.set)


@pytest.fixture
def otel_job(tmp_path: Path, write_job: WriteJob) -> Callable[..., Path]:
    def make(n: int, **limits: Any) -> Path:
        write_csv([{"id": str(i), "name": f"Person {i}", "experience": f"{SECRET_TEXT} {i}"}
                   for i in range(n)], tmp_path / "in.csv")
        return write_job("in.csv", task={"prompt": PROMPT}, limits=limits)

    return make


def otel_env(key: str, endpoint: str, **extra: str) -> dict[str, str]:
    """The command's environment: this endpoint, `extra`, and no OTEL_* variable of the caller's."""
    env = {k: v for k, v in cli_env(key).items() if not k.startswith("OTEL_")}
    return env | {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **extra}


def attributes(kvs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        kind = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, kind) if kind else None
    return found


def spans(bodies: list[bytes]) -> tuple[dict[str, Any], list[Any]]:
    """(the resource's attributes, every span) of the trace requests."""
    resource: dict[str, Any] = {}
    found: list[Any] = []
    for body in bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            resource |= attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                found += list(ss.spans)
    return resource, found


def points(bodies: list[bytes]) -> Points:
    """Every data point by (name, labels without job); every point is labelled job="job"."""
    found: Points = {}
    for body in bodies:
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    assert kind in ("sum", "gauge"), metric.name
                    for p in getattr(metric, kind).data_points:
                        labels = attributes(p.attributes)
                        assert labels.pop("job") == "job"
                        value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                        found[(metric.name, tuple(sorted(labels.items())))] = value
    return found


def value(m: Points, name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    return data


def otel_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "OpenTelemetry" in line]


def test_a_run_is_a_trace_with_its_passes_and_the_report_s_metrics(
        tmp_path: Path, simulator: tuple[str, Simulator], receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], run_batch: RunBatch, api_key: str) -> None:
    url, _ = simulator
    endpoint, got = receiver
    env = otel_env(api_key, endpoint, OTEL_SERVICE_NAME="batch-tests",
                   OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")

    proc = run_batch(otel_job(8), "--base-url", url, env=env)

    assert proc.returncode == 0, proc.stderr
    assert otel_warnings(proc.stderr) == []
    assert got.bodies["traces"] and got.bodies["metrics"]
    for body in got.bodies["traces"] + got.bodies["metrics"]:
        assert api_key.encode() not in body, "the API key was exported"
        assert SECRET_TEXT.encode() not in body and b"Rewrite for" not in body, "prompt text was exported"
    resource, found = spans(got.bodies["traces"])
    assert resource["service.name"] == "batch-tests" and resource["deployment.environment"] == "test"
    [run] = [s for s in found if s.name == "batch.run"]
    assert run.parent_span_id == b""
    children = {s.name: s for s in found if s is not run}
    assert {"batch.pass1.online", "batch.pass2.output"} <= set(children)
    for child in children.values():
        assert child.parent_span_id == run.span_id and child.trace_id == run.trace_id
    r = report(tmp_path)
    a = attributes(run.attributes)
    assert a["batch.job"] == "job" and a["batch.model"] == MODEL and a["batch.mode"] == "online"
    assert a["batch.exit_code"] == 0 and a["batch.status"] == "complete"
    assert a["batch.rows.answered"] == 8 and a["batch.rows.failed"] == 0 and a["batch.rows.from_store"] == 0
    assert a["batch.requests"] == r["requests_sent"] and a["batch.http_429"] == r["rate_limited_429"]
    assert a["batch.tokens.input"] == r["input_tokens"] and a["batch.tokens.output"] == r["output_tokens"]
    assert a["batch.cost_usd"] == pytest.approx(r["estimated_cost_usd"])

    m = points(got.bodies["metrics"])
    assert value(m, "batch_rows_total", outcome="answered") == r["rows_ok"] == 8
    assert value(m, "batch_rows_total", outcome="failed") == r["rows_failed"] == 0
    assert value(m, "batch_rows_total", outcome="from_store") == r["rows_from_store"]
    assert value(m, "batch_requests_total") == r["requests_sent"]
    assert value(m, "batch_http_429_total") == r["rate_limited_429"]
    for kind in ("input", "output", "cached"):
        assert value(m, "batch_tokens_total", kind=kind) == r[f"{kind}_tokens"]
    assert value(m, "batch_cost_usd_total") == pytest.approx(r["estimated_cost_usd"])
    assert value(m, "batch_last_run_exit_code") == 0
    assert value(m, "batch_last_success_timestamp_seconds") == value(m, "batch_last_run_timestamp_seconds")
    assert value(m, "batch_run_duration_seconds") >= 0


def test_a_batch_api_run_is_a_trace_with_submit_wait_and_merge(
        tmp_path: Path, start_sim: StartSim, receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], run_batch: RunBatch, api_key: str) -> None:
    url, sim = start_sim(batch_validate_s=0.05, batch_finalize_s=0.05)
    endpoint, got = receiver
    job = otel_job(30)
    job.write_text(job.read_text(encoding="utf-8") + '\n[run]\nmode = "batch"\npoll-interval = 0.2\n',
                   encoding="utf-8")

    proc = run_batch(job, "--base-url", url, env=otel_env(api_key, endpoint))

    assert proc.returncode == 0, proc.stderr
    assert otel_warnings(proc.stderr) == []
    (batch,) = sim.batches.values()
    for body in got.bodies["traces"] + got.bodies["metrics"]:
        assert api_key.encode() not in body, "the API key was exported"
        assert SECRET_TEXT.encode() not in body and b"Rewrite for" not in body, "prompt text was exported"
    _, found = spans(got.bodies["traces"])
    [run] = [s for s in found if s.name == "batch.run"]
    assert attributes(run.attributes)["batch.mode"] == "batch"
    assert attributes(run.attributes)["batch.exit_code"] == 0
    by_name: dict[str, list[Any]] = {}
    for s in found:
        if s is not run:
            assert s.parent_span_id == run.span_id and s.trace_id == run.trace_id, s.name
            by_name.setdefault(s.name, []).append(s)
    assert {"batch.pass1.batch_api", "batch.pass2.output", "batch.batch_api.submit",
            "batch.batch_api.wait", "batch.batch_api.merge"} <= set(by_name)
    [submit] = by_name["batch.batch_api.submit"]
    assert attributes(submit.attributes) == {"batch.round": 1, "batch.batches_submitted": 1,
                                             "batch.requests_submitted": 30}
    [merge] = by_name["batch.batch_api.merge"]
    assert attributes(merge.attributes) == {"batch.batch_id": batch.id, "batch.batch_status": "completed",
                                            "batch.requests": 30, "batch.results_merged": 30}
    waits = by_name["batch.batch_api.wait"]
    assert sum(attributes(w.attributes)["batch.polls"] for w in waits) >= 1  # the last one saw it end
    # In order, without overlap: submit, then wait, then merge; all within pass 1.
    [pass1] = by_name["batch.pass1.batch_api"]
    assert pass1.start_time_unix_nano <= submit.start_time_unix_nano
    assert submit.end_time_unix_nano <= min(w.start_time_unix_nano for w in waits)
    assert max(w.end_time_unix_nano for w in waits) <= merge.start_time_unix_nano
    assert merge.end_time_unix_nano <= pass1.end_time_unix_nano


def test_failed_rows_are_exit_1_in_the_trace_and_the_metrics(
        tmp_path: Path, start_sim: StartSim, receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], run_batch: RunBatch, api_key: str) -> None:
    url, _ = start_sim(fault_rate=1.0, faults=("500", "503"))
    endpoint, got = receiver

    proc = run_batch(otel_job(4, **{"max-attempts": 2}), "--base-url", url, env=otel_env(api_key, endpoint))

    assert proc.returncode == 1, proc.stderr
    [run] = [s for s in spans(got.bodies["traces"])[1] if s.name == "batch.run"]
    assert attributes(run.attributes)["batch.exit_code"] == 1
    m = points(got.bodies["metrics"])
    assert value(m, "batch_rows_total", outcome="failed") == report(tmp_path)["rows_failed"] == 4
    assert value(m, "batch_last_run_exit_code") == 1
    assert ("batch_last_success_timestamp_seconds", ()) not in m


@pytest.mark.parametrize("where", ["job file", "partitions"])
def test_a_refused_job_is_a_trace_with_exit_code_2(
        where: str, tmp_path: Path, simulator: tuple[str, Simulator], receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    # Refused by the door before the run starts (the job file), or by the run itself (partitions that
    # disagree, found once it is under way): either way one trace, the run span alone, exit code 2.
    url, sim = simulator
    if where == "job file":
        job = otel_job(3)
        job.write_text(job.read_text(encoding="utf-8").replace("[task]", "[task]\ntemperature = 9"),
                       encoding="utf-8")
    else:
        (tmp_path / "in").mkdir()
        pd.DataFrame({"name": ["a"], "experience": [SECRET_TEXT]}).to_parquet(tmp_path / "in" / "a.parquet")
        pd.DataFrame({"name": ["b"], "experience": [SECRET_TEXT], "note": ["x"]}).to_parquet(
            tmp_path / "in" / "b.parquet")
        job = write_job("in", task={"prompt": PROMPT}, output={"path": "out"})

    proc = run_batch(job, "--base-url", url, env=otel_env(api_key, endpoint := receiver[0]))

    assert proc.returncode == 2, proc.stderr
    assert ("temperature" if where == "job file" else "note") in proc.stderr
    assert otel_warnings(proc.stderr) == [] and sim.log == [] and endpoint
    got = receiver[1]
    for body in got.bodies["traces"] + got.bodies["metrics"]:
        assert api_key.encode() not in body and SECRET_TEXT.encode() not in body
    _, found = spans(got.bodies["traces"])
    [run] = found  # one trace: the run span, nothing under it, however far the job got
    assert run.name == "batch.run" and run.parent_span_id == b""
    a = attributes(run.attributes)
    assert a["batch.job"] == "job" and a["batch.exit_code"] == 2
    assert a["batch.rows.answered"] == 0 and a["batch.requests"] == 0
    assert run.status.code == run.status.STATUS_CODE_ERROR
    m = points(got.bodies["metrics"])
    assert value(m, "batch_last_run_exit_code") == 2
    assert value(m, "batch_requests_total") == 0
    assert ("batch_last_success_timestamp_seconds", ()) not in m


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("collector", ["down", "hang", "500"])
def test_a_collector_that_fails_never_changes_the_run(
        collector: str, tmp_path: Path, start_sim: StartSim, receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], run_batch: RunBatch, api_key: str) -> None:
    endpoint, got = receiver
    got.mode = collector
    if collector == "down":
        endpoint = closed_port()
    ok_url, _ = start_sim()
    failing_url, _ = start_sim(fault_rate=1.0, faults=("500",))
    job = otel_job(3, **{"max-attempts": 1})

    for url, code in ((ok_url, 0), (failing_url, 1)):
        (tmp_path / "out.parquet.state.sqlite").unlink(missing_ok=True)
        proc = run_batch(job, "--base-url", url, env=otel_env(api_key, endpoint), timeout=HANG_GUARD_S)

        assert proc.returncode == code, proc.stderr
        assert report(tmp_path)["rows_failed"] == 3 * code
        assert len(otel_warnings(proc.stderr)) == 1, proc.stderr
    if collector != "down":
        assert got.bodies["traces"] and got.bodies["metrics"], "it was tried"


def test_without_the_extra_one_line_says_what_to_install(
        tmp_path: Path, simulator: tuple[str, Simulator], otel_job: Callable[..., Path],
        run_batch: RunBatch, api_key: str) -> None:
    url, _ = simulator
    hidden = tmp_path / "no_otel" / "opentelemetry"
    hidden.mkdir(parents=True)  # found before site-packages: as if the extra were not installed
    (hidden / "__init__.py").write_text('raise ImportError("not installed")\n', encoding="utf-8")
    env = otel_env(api_key, closed_port(), PYTHONPATH=str(hidden.parent))

    proc = run_batch(otel_job(2), "--base-url", url, env=env)

    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if 'pip install "batch[otel]"' in line]
    assert len(lines) == 1, proc.stderr


CHILD = """
import sys
import pandas as pd
import batch
out = batch.run(pd.DataFrame({"name": ["a", "b", "c"]}), model=sys.argv[1], prompt="Say ${name}",
                base_url=sys.argv[2], state=sys.argv[3])
heavy = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http", "google.protobuf", "requests")
print(list(out["text"].isna()), sorted(m for m in sys.modules if m.startswith(heavy)))
"""


def test_the_run_s_process_never_loads_opentelemetry_its_exporter_s_does(
        tmp_path: Path, simulator: tuple[str, Simulator], receiver: tuple[str, Receiver],
        api_key: str) -> None:
    """The Python door, as a notebook calls it: the trace and the metrics arrive, with the phases
    inside the run's span in time, while the caller's interpreter never imported the SDK (the export
    runs in a process of its own) and the exporter was not handed the key."""
    url, _ = simulator
    endpoint, got = receiver
    proc = subprocess.run([sys.executable, "-c", CHILD, MODEL, url, str(tmp_path / "state.sqlite")],
                          env=otel_env(api_key, endpoint), capture_output=True, text=True,
                          timeout=HANG_GUARD_S, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[False, False, False] []", proc.stdout
    assert otel_warnings(proc.stderr) == []
    assert got.bodies["metrics"]
    for body in got.bodies["traces"] + got.bodies["metrics"]:
        assert api_key.encode() not in body
    _, found = spans(got.bodies["traces"])
    [run] = [s for s in found if s.name == "batch.run"]
    phases = [s for s in found if s is not run]
    assert {s.name for s in phases} >= {"batch.pass1.online", "batch.pass2.output"}
    for s in phases:
        assert s.parent_span_id == run.span_id
        assert run.start_time_unix_nano <= s.start_time_unix_nano < s.end_time_unix_nano
        assert s.end_time_unix_nano <= run.end_time_unix_nano
    assert attributes(run.attributes)["batch.job"] == "python"


def test_the_exporter_s_environment_has_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from batch.report.child import child_env

    monkeypatch.setenv("GROQ_API_KEY", "gsk_" + "k" * 40)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=data")
    env = child_env()
    assert "GROQ_API_KEY" not in env and env["OTEL_EXPORTER_OTLP_HEADERS"] == "x-team=data"


def test_ctrl_c_at_a_terminal_still_exports_the_stopped_run(
        tmp_path: Path, start_sim: StartSim, receiver: tuple[str, Receiver],
        otel_job: Callable[..., Path], api_key: str) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group, the exporter's process too:
    the run stops (exit 3) and its trace and metrics still arrive, with that exit code."""
    url, sim = start_sim(latency_ms=600_000)  # requests on the wire never end: only signals stop the run
    endpoint, got = receiver
    job = otel_job(12, concurrency=4, **{"request-timeout": 900})
    with (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                                env=otel_env(api_key, endpoint), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)  # a group of its own, as a shell's job
    try:
        wait_until(lambda: sim.in_flight == 4, "requests on the wire")
        os.killpg(proc.pid, signal.SIGINT)
        wait_until(lambda: "finishing the requests in flight" in (tmp_path / "run.err").read_text(), "signal")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()

    stderr = (tmp_path / "run.err").read_text()
    assert code == 3, stderr
    assert otel_warnings(stderr) == [], stderr
    _, found = spans(got.bodies["traces"])
    [run] = [s for s in found if s.name == "batch.run"]
    assert attributes(run.attributes)["batch.exit_code"] == 3
    assert value(points(got.bodies["metrics"]), "batch_last_run_exit_code") == 3
