"""Merging a batch's result file part by part: a file is checked whole before its first part is merged,
so an unreadable line deep in it (after more good lines than one part holds) merges nothing of its
batch, which stays open; a later run with a good download merges everything, over several parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import BackgroundLoop, cli_env
from nasty import write_csv
from test_batch_mode import FAST, RUN, Handler, RunBatch, WriteJob
from test_e2e import PROMPT, check_rows, plain_rows, read_output

from batch.batchapi.results import PART_LINES
from batch.sim import SimConfig, Simulator

ROWS = PART_LINES + PART_LINES // 2
BAD_LINE = PART_LINES + 100  # 0-based: after a whole part of good lines


def _status(job: Path, tmp_path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "batch", "status", str(job), "--json"], cwd=tmp_path,
                          env=cli_env(None), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def test_an_unreadable_line_after_a_whole_part_merges_nothing_of_its_batch(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    sim = Simulator(SimConfig(rpm=10**6, tpm=10**12, rpd=10**9, tpd=10**15, batch_lines_per_s=10**6, **FAST))
    cut = {"downloads": 0, "left": 3}  # every download of the first run (it tries 3 times) is cut

    @web.middleware
    async def cut_a_line(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method != "GET" or not request.path.endswith("/content"):
            return response
        cut["downloads"] += 1
        if not cut["left"]:
            return response
        cut["left"] -= 1
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        lines = response.body.split(b"\n")
        assert len(lines) > BAD_LINE + 1, "the result file is shorter than the test needs"
        lines[BAD_LINE] = lines[BAD_LINE][: len(lines[BAD_LINE]) // 2]  # a line cut in the middle
        return web.Response(body=b"\n".join(lines), content_type="application/octet-stream")

    sim.app.middlewares.append(cut_a_line)
    url = background_loop.run(sim.start())
    try:
        rows = plain_rows(ROWS)
        write_csv(rows, tmp_path / "in.csv")
        job = write_job("in.csv", task={"prompt": PROMPT}, run=RUN)

        first = run_batch(job, "--base-url", url, timeout=120)
        assert first.returncode == 3, first.stderr
        assert "had 1 unreadable lines in 3 downloads" in first.stderr
        assert "nothing of its batch was merged" in first.stderr
        assert cut == {"downloads": 3, "left": 0}
        assert not (tmp_path / "out.parquet").exists()
        info = _status(job, tmp_path)
        assert (info["answered"], info["pending"], info["in_batches"]) == (0, ROWS, ROWS), \
            "answers of a file with an unreadable line reached the store"
        (batch,) = info["batches"]
        assert not batch["merged"]
        assert not list(tmp_path.rglob("*.output")), "a downloaded result file was left behind"

        second = run_batch(job, "--base-url", url, timeout=120)
        assert second.returncode == 0, second.stderr
        assert cut["downloads"] == 4
        assert (sim.uploads, sim.batches_created) == (1, 1), "the batch's requests were submitted again"
        assert sim.log == []
        check_rows(rows, read_output(tmp_path / "out.parquet")[1], batch=True)
        info = _status(job, tmp_path)
        assert (info["answered"], info["pending"]) == (ROWS, 0)
    finally:
        background_loop.run(sim.stop())
