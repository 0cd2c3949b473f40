"""The HTML run report, as a browser sees it: real runs against the simulator, opened in headless Chromium.

Each report is loaded by Chromium with a resolver that resolves nothing; the test then reads the DOM
the browser built: a Content-Security-Policy that forbids every load, no reference that leaves the
file, every plot present with drawn paths, every figure equal to the JSON report's, and the faults
and 429s the simulator injected counted on the timeline. A screenshot is taken and must not be blank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chromium import dump_dom, executable, screenshot
from conftest import cli_env
from matplotlib.image import imread
from nasty import write_csv
from test_e2e import PROMPT, plain_rows

from batch.report.html.write import write_html
from batch.sim import Simulator

# CI installs Debian's chromium (.ci/run); elsewhere these tests say what is missing instead of failing.
pytestmark = pytest.mark.skipif(executable() is None,
                                reason="needs a headless browser: apt-get install chromium")

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
MB = 1024 * 1024


class Dom(HTMLParser):
    """Every element's tag and attributes, and the plots (figure[data-plot]) with their SVG paths."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.plots: dict[str, int] = {}  # plot name -> paths with drawing commands
        self.text: list[str] = []
        self._plot: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "figure" and "data-plot" in a:
            self._plot = a["data-plot"]
            self.plots[self._plot] = 0
        if tag == "path" and self._plot is not None and len(a.get("d", "").split()) > 2:
            self.plots[self._plot] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._plot = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def figures(self) -> dict[str, Any]:
        return {a["data-key"]: json.loads(a["data-value"]) for _, a in self.elements if "data-key" in a
                and not a["data-key"].startswith("errors.")} | {"errors": {
                    a["data-key"][7:]: json.loads(a["data-value"]) for _, a in self.elements
                    if a.get("data-key", "").startswith("errors.")}}


def check_page(page: Path, report: dict[str, Any], plots: set[str]) -> Dom:
    """Load `page` in Chromium and check what every report must be; the DOM, for more checks."""
    assert page.stat().st_size < MB
    dom = Dom(dump_dom(page))
    metas = [a for t, a in dom.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert [m["content"] for m in metas] == [CSP]
    for tag, attrs in dom.elements:
        assert tag not in ("script", "link", "img", "iframe", "object", "embed"), tag
        for name in ("src", "href", "xlink:href", "action", "srcset"):
            assert not attrs.get(name) or attrs[name].startswith("#"), (tag, name, attrs[name])
    assert "url(http" not in page.read_text(encoding="utf-8") and "@import" not in page.read_text(
        encoding="utf-8")
    assert set(dom.plots) == plots
    for name, paths in dom.plots.items():
        assert paths >= 3, f"plot {name} has nothing drawn"
    shown = dom.figures()
    for key, value in shown.items():
        assert report[key] == value, key
    assert shown["status"] == report["status"]
    for key in ("rows_ok", "rows_failed", "requests_sent", "retries", "rate_limited_429", "input_tokens",
                "output_tokens", "estimated_cost_usd", "latency_p50_s", "latency_p95_s", "latency_p99_s"):
        assert key in shown, key
    png = screenshot(page, page.with_suffix(".png"))
    pixels = imread(png)
    assert pixels.shape[1] == 1100 and float(np.std(pixels)) > 0.02, "the screenshot is blank"
    return dom


def report_command(job: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch", "report", str(job), *args], env=cli_env(None),
                          cwd=job.parent, capture_output=True, text=True, timeout=60, check=False)


def test_a_run_with_faults_and_429s_shows_them_on_the_timeline(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    # The server takes 1,200 requests a minute in bursts of 0.5 s; the job asks for 3,000: 429s, then
    # the run paces itself just below the server's figure. One request in ten fails and is retried.
    url, _ = start_sim(rpm=1200, burst_s=0.5, fault_rate=0.1, faults=("500", "503", "drop"),
                         latency_ms=5, jitter_ms=20, seed=3)
    write_csv(plain_rows(90), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT},
                    limits={"requests-per-minute": 3000, "tokens-per-minute": None, "max-attempts": 8})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert report["rate_limited_429"] > 0 and report["retries"] > report["rate_limited_429"]
    dom = check_page(tmp_path / "out.parquet.report.html", report, {"pace", "latency", "rows", "cost"})
    text = " ".join(dom.text)
    assert f"429s ({report['rate_limited_429']})" in text and f"retries ({report['retries']})" in text
    assert "lowered to" in text  # the job's 3,000 a minute, lowered when a 429 named the server's limit

    figures = json.loads(report_command(job, "--json").stdout)
    tl = figures["figures"]["timeline"]
    assert sum(tl["rate_limited"]) == report["rate_limited_429"]
    assert sum(tl["retries"]) == report["retries"]
    assert sum(tl["requests"]) == report["requests_sent"]
    assert sum(tl["errors"]) == sum(report["errors"].values()) - report["rate_limited_429"]
    assert sum(tl["answered"]) == report["rows_ok"] == 90
    assert tl["rpm"][0] == 3000 and 0 < tl["rpm"][-1] < 1200  # the limit in force, as it moved
    assert figures["summary"] == report


def test_report_command_draws_the_last_run_again(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = simulator
    write_csv(plain_rows(12), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    write_csv(plain_rows(20), tmp_path / "in.csv")  # 8 new rows: a second run, a second bar
    assert run_batch(job, "--base-url", url).returncode == 0
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    first = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")

    proc = report_command(job, "--html", "again.html")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "again.html"  # relative to where the command runs
    dom = check_page(tmp_path / "again.html", report, {"pace", "latency", "rows", "cost"})
    history = [a for t, a in dom.elements if a.get("data-table") == "history"]
    assert len(history) == 1 and first.count("<tr>") == (tmp_path / "again.html").read_text(
        encoding="utf-8").count("<tr>")
    assert report["rows_from_store"] == 12 and report["requests_sent"] == 8


def test_report_of_a_job_that_never_ran_is_a_clear_error(tmp_path: Path, write_job: WriteJob) -> None:
    write_csv(plain_rows(3), tmp_path / "in.csv")
    proc = report_command(write_job("in.csv"))
    assert proc.returncode == 2 and "has not run yet" in proc.stderr


def test_a_stopped_run_writes_its_html_report_too(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = start_sim(rpd=5)
    write_csv(plain_rows(10), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 3, proc.stderr
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert report["status"] == "stopped"
    dom = check_page(tmp_path / "out.parquet.report.html", report, {"pace", "latency", "rows", "cost"})
    assert "quota" in " ".join(dom.text)
    again = report_command(job, "--json")  # the store kept the stopped run's figures
    assert again.returncode == 0 and json.loads(again.stdout)["summary"] == report


def test_batch_mode_shows_each_batch_on_a_timeline(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = start_sim(batch_validate_s=0.3, batch_lines_per_s=40, batch_finalize_s=0.3)
    write_csv(plain_rows(30), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run={"mode": "batch", "poll-interval": 0.2})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    check_page(tmp_path / "out.parquet.report.html", report, {"latency", "rows", "cost", "batches"})
    batches = json.loads(report_command(job, "--json").stdout)["batches"]
    assert len(batches) == 1 and batches[0]["status"] == "completed"
    times = batches[0]["times"]
    assert {"prepared", "validating", "in_progress", "completed", "merged"} <= set(times)
    assert times["prepared"] <= times["validating"] <= times["merged"]


def test_a_report_that_cannot_be_drawn_leaves_the_run_successful(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = simulator
    write_csv(plain_rows(4), tmp_path / "in.csv")
    (tmp_path / "out.parquet.report.html").mkdir()  # in the way: the page cannot be put there

    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    assert "could not write" in proc.stderr and "report.html" in proc.stderr
    assert json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))["rows_ok"] == 4


def test_a_batch_run_that_does_not_wait_reports_its_submission(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = start_sim(batch_validate_s=5.0)
    write_csv(plain_rows(10), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run={"mode": "batch"})

    proc = run_batch(job, "--base-url", url, "--no-wait")

    assert proc.returncode == 3, proc.stderr
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert (report["status"], report["mode"], report["batches"], report["batch_requests"]) == (
        "stopped", "batch", 1, 10)
    dom = check_page(tmp_path / "out.parquet.report.html", report, {"cost", "batches"})
    assert "No row was answered" in " ".join(dom.text)


def test_text_from_rows_and_servers_is_shown_as_text(tmp_path: Path) -> None:
    hostile = '<script>alert(1)</script><img src="http://example.com/x.png">" onload="x'
    summary = {"status": "failed-rows", "rows": 1, "rows_ok": 0, "rows_failed": 1, "rows_from_store": 0,
               "model": hostile, "mode": "online", "errors": {hostile: 1}, "message": hostile}
    figures = {"failures": {"first": [{"row": 0, "error": hostile}], "kinds": {hostile: 1}}, "run": 1}
    data = {"job": hostile, "generated": 1.7e9, "summary": summary, "figures": figures,
            "history": [{"run": 1, "started": 1.7e9, "status": hostile, "cost_usd": 0.5}],
            "batches": [{"name": hostile, "batch_id": None, "status": hostile, "lines": 1, "counts": None,
                         "times": {"prepared": 1.7e9, hostile: 1.7e9 + 5}}]}
    page = tmp_path / "hostile.html"

    assert write_html(data, page)

    dom = Dom(dump_dom(page))
    assert not [t for t, _ in dom.elements if t in ("script", "img")]
    assert all(not a.get("src") and not a.get("onload") for _, a in dom.elements)
    assert "".join(dom.text).count(hostile) >= 4  # job, message, error, kinds: all shown as written
