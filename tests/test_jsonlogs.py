"""JSON log lines (`--log-format json`, `[run] log-format = "json"`): what a log shipper reads from stderr.

Every line of a run is one JSON object with time, level, message and job; a line about a request
carries its row, attempt, HTTP status and wait; the summary carries the report's figures; no line
holds the API key (`run_batch` checks every run's output for it too).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nasty import write_csv

from batch.report.logs import BlotKey, JsonLines, about, stderr_handler
from batch.sim import Simulator

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]


def json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line parses, or this fails
    for line in lines:
        assert isinstance(line, dict) and {"time", "level", "message", "job"} <= set(line), line
        assert line["job"] == "job"
    return lines


def write_rows(tmp_path: Path, n: int) -> None:
    write_csv([{"id": str(i), "name": f"P{i}", "experience": f"json log row {i}"} for i in range(n)],
              tmp_path / "in.csv")


def test_every_line_of_a_run_with_retries_is_json_and_keyless(tmp_path: Path, start_sim: StartSim,
                                                               write_job: WriteJob, run_batch: RunBatch,
                                                               api_key: str) -> None:
    # The server checks the key, so it is really sent; some requests fail and are retried (logged -v).
    url, _ = start_sim(api_key=api_key, fault_rate=0.3, faults=("500", "503"), seed=4)
    write_rows(tmp_path, 20)
    job = write_job("in.csv", limits={"max-attempts": 10}, run={"log-format": "json"})

    proc = run_batch(job, "--base-url", url, "-v")

    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc.stderr)
    assert all(api_key not in json.dumps(line) for line in lines)
    retries = [line for line in lines if line["message"].startswith("retry ")]
    assert retries, "the faults made no retry: the test proves nothing"
    for line in retries:
        assert line["level"] == "DEBUG" and line["status"] in (500, 503), line
        assert 1 <= line["row"] <= 20 and line["attempt"] >= 1 and line["wait"] >= 0, line
    summary = lines[-1]
    assert summary["level"] == "INFO" and summary["message"].startswith("batch: complete")
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert summary["summary"]["requests_sent"] == report["requests_sent"]
    assert summary["summary"]["rows_ok"] == 20


def test_the_flag_gives_json_and_quiet_still_shows_the_summary(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = simulator
    write_rows(tmp_path, 3)

    proc = run_batch(write_job("in.csv"), "--base-url", url, "--log-format", "json", "-q")

    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc.stderr)
    assert [line["summary"]["rows_ok"] for line in lines] == [3]


def test_a_refused_job_says_why_in_json(tmp_path: Path, write_job: WriteJob, run_batch: RunBatch) -> None:
    write_rows(tmp_path, 3)
    job = write_job("in.csv", task={"temperature": 9}, run={"log-format": "json"})

    proc = run_batch(job)

    assert proc.returncode == 2, proc.stderr
    lines = json_lines(proc.stderr)
    assert any(line["level"] == "ERROR" and "temperature" in line["message"] for line in lines), lines


def test_a_stopped_run_is_json_to_the_end(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                          run_batch: RunBatch) -> None:
    url, _ = start_sim(rpd=2)
    write_rows(tmp_path, 6)

    proc = run_batch(write_job("in.csv", run={"log-format": "json"}), "--base-url", url)

    assert proc.returncode == 3, proc.stderr
    lines = json_lines(proc.stderr)
    assert any(line["level"] == "WARNING" and "per day" in line["message"] for line in lines), lines
    assert [line["summary"]["status"] for line in lines if "summary" in line] == ["stopped"]


def test_a_message_that_carries_the_key_is_blotted_in_any_format(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "gsk_blot_me_0123456789abcdef"
    logger = logging.getLogger("batch.test_jsonlogs")
    logger.propagate = False
    try:
        for fmt in ("json", "text"):
            logger.handlers[:] = [stderr_handler(fmt, "nightly", secret)]
            logger.warning("the server echoed %s back", f"Bearer {secret}")
        err = capsys.readouterr().err
    finally:
        logger.handlers.clear()
    assert secret not in err and err.count("Bearer ***") == 2
    first = json.loads(err.splitlines()[0])
    assert first["job"] == "nightly" and first["level"] == "WARNING"


def test_request_fields_are_json_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines("j"))
    handler.addFilter(BlotKey("gsk_never_0123456789"))
    record = logging.makeLogRecord({"msg": "retry", "levelname": "DEBUG", "levelno": logging.DEBUG,
                                    **about(row=3, attempt=2, status=429, wait=1.23456)})
    handler.handle(record)
    line = json.loads(stream.getvalue())
    assert (line["row"], line["attempt"], line["status"], line["wait"]) == (3, 2, 429, 1.235)
    assert about(row=1) == {"row": 1}
