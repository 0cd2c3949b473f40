"""Every failure path ends clean: `python -m batch run` as a subprocess, against the simulator on a real
socket, with outputs and states that cannot be written, disks that fill up, and answers that do not
fit their columns. Each test says what the user sees (exit code, one clear line) and what survives
(every committed answer, the previous output), and that nothing is paid for twice.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, cli_env
from nasty import write_csv

from batch.sim import SimConfig, Simulator
from batch.store.answers import Store
from batch.tables.sink import OutputWriter

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rows(n: int) -> list[dict[str, str | None]]:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"experience number {i}"} for i in range(n)]


# -- an output or state that can never be written is refused before anything is sent ----------------

@pytest.mark.parametrize("key, table, value", [
    ("[output] path", "output", "/proc/batch-out.parquet"),
    ("[output] path", "output", "/proc/self/batch/out.parquet"),
    ("[state] path", "state", "/proc/batch.state.sqlite"),
    ("[state] path", "state", "a-file/state.sqlite"),
    ("[output] path", "output", "deep/" + "n" * 250 + ".parquet"),
])
def test_unwritable_paths_are_refused_before_sending(tmp_path: Path, simulator: tuple[str, Simulator],
                                                     write_job: WriteJob, run_batch: RunBatch,
                                                     key: str, table: str, value: str) -> None:
    url, sim = simulator
    write_csv(rows(3), tmp_path / "in.csv")
    (tmp_path / "a-file").write_text("a file where a folder should be", encoding="utf-8")
    job = write_job("in.csv", **{table: {"path": value}})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert list(sim.log) == [], "requests were sent for a job whose results could not be saved"
    line = next(x for x in proc.stderr.splitlines() if key in x)
    assert value.split("/")[-1][:40] in line, line
    assert not (tmp_path / "deep").exists()


# -- batch mode leaves no request file behind -----------------------------------------------------------

def test_a_refused_upload_and_an_orphaned_file_leave_no_local_file(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    sim = Simulator(SimConfig(rpm=10**6, tpm=10**12, rpd=10**9, tpd=10**15, batch_validate_s=0.05,
                              batch_finalize_s=0.05))
    refuse = {"on": True}

    @web.middleware
    async def refuse_uploads(request: web.Request, handler: Handler) -> web.StreamResponse:
        if refuse["on"] and request.method == "POST" and request.path.endswith("/files"):
            return web.json_response({"error": {"message": "uploads are closed for this organization",
                                                "type": "invalid_request_error"}}, status=400)
        return await handler(request)

    sim.app.middlewares.append(refuse_uploads)
    url = background_loop.run(sim.start())
    try:
        write_csv(rows(4), tmp_path / "in.csv")
        job = write_job("in.csv", run={"mode": "batch", "poll-interval": 0.2})
        folder = tmp_path / "out.parquet.state.sqlite.batches"

        first = run_batch(job, "--base-url", url)
        assert first.returncode == 4, first.stderr
        assert "uploads are closed" in first.stderr
        assert not folder.exists() or list(folder.iterdir()) == [], "the refused upload's file was left"

        # A run killed while writing a request file leaves it half-written; the next run removes it.
        folder.mkdir(exist_ok=True)
        (folder / "writing-4194304-1.jsonl").write_bytes(b'{"custom_id":"half')
        refuse["on"] = False
        second = run_batch(job, "--base-url", url)
        assert second.returncode == 0, second.stderr
        assert not folder.exists() or list(folder.iterdir()) == []
    finally:
        background_loop.run(sim.stop())


def test_the_output_folder_is_synced_after_the_rename(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []  # (what, whether the output was in place at that moment)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, (tmp_path / "out.parquet").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    schema = pa.schema([("id", pa.string())])
    with OutputWriter(tmp_path / "out.parquet", "parquet", schema, "text") as out:
        out.write(pa.record_batch([pa.array(["1"])], schema=schema), ["no request"])
    assert synced == [("file", False), ("folder", True)]
    assert pq.read_table(tmp_path / "out.parquet").column("error").to_pylist() == ["no request"]


# -- a CSV output of nested input columns ---------------------------------------------------------------

def test_nested_input_columns_go_into_a_csv_output_as_json(tmp_path: Path, simulator: tuple[str, Simulator],
                                                           write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    table = pa.table({
        "name": ["a", "b", "c"],
        "experience": ["x", "y", "z"],
        "tags": pa.array([["red", "é"], None, []], pa.list_(pa.string())),
        "meta": pa.array([{"n": 1, "when": "now"}, {"n": None, "when": "later"}, None]),
        "pairs": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    job = write_job("in.parquet", output={"path": "out.csv"})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = pacsv.read_csv(tmp_path / "out.csv", convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("tags", "meta", "pairs")}, strings_can_be_null=True,
        quoted_strings_can_be_null=False)).to_pylist()
    assert [r["tags"] for r in out] == ['["red", "é"]', None, "[]"]
    assert [r["meta"] for r in out] == ['{"n": 1, "when": "now"}', '{"n": null, "when": "later"}', None]
    assert [r["pairs"] for r in out] == ['[["k", 1]]', "[]", None]
    assert [r["error"] for r in out] == [None] * 3 and len(sim.log) == 3


# -- a full disk: every committed answer kept, the previous output intact, exit 3 -----------------------

def run_capped(job: Path, url: str, key: str, cwd: Path,
               max_file_bytes: int) -> subprocess.CompletedProcess[str]:
    """`python -m batch run` in a child whose files cannot grow past `max_file_bytes` (the kernel's
    RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with EFBIG instead of killing the process): a
    disk that fills up, for this process alone."""
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = subprocess.run([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                          env=cli_env(key), cwd=cwd, capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)
    assert key not in proc.stderr + proc.stdout
    return proc


def bulky_rows(n: int, start: int = 0) -> list[dict[str, str | None]]:
    # Random text does not compress: every answer costs its size in the store and in the output.
    return [{"id": str(i), "name": f"Person {i}", "experience": secrets.token_hex(600)}
            for i in range(start, start + n)]


def ok_answers(state: Path) -> int:
    # As `status` sees them: committed answers, folded into the answers or still in the journal.
    look = Store(state, readonly=True)
    try:
        return look.counts()["ok"]
    finally:
        look.close()


def test_a_full_disk_under_the_store_stops_clean_and_loses_no_committed_answer(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch,
        api_key: str) -> None:
    url, sim = simulator
    first = bulky_rows(5)
    write_csv(first, tmp_path / "in.csv")
    job = write_job("in.csv", limits={"concurrency": 2})
    assert run_batch(job, "--base-url", url).returncode == 0
    output, state = tmp_path / "out.parquet", tmp_path / "out.parquet.state.sqlite"
    previous = output.read_bytes()

    more = first + bulky_rows(300, start=5)
    write_csv(more, tmp_path / "in.csv")
    capped = run_capped(job, url, api_key, tmp_path, max_file_bytes=state.stat().st_size + 120_000)

    assert capped.returncode == 3, capped.stderr
    assert "Traceback" not in capped.stderr, capped.stderr
    assert "free space" in capped.stderr.lower() and "run the same command" in capped.stderr
    assert output.read_bytes() == previous, "the previous output did not survive"
    kept = ok_answers(state)
    assert 5 < kept < len(more), "no answer was committed before the disk was full, or none failed"
    sent_before = len(sim.log)

    again = run_batch(job, "--base-url", url)  # space freed

    assert again.returncode == 0, again.stderr
    assert ok_answers(state) == len(more)
    assert len(sim.log) - sent_before == len(more) - kept, "a committed answer was paid for again"
    assert [r["id"] for r in pq.read_table(output).to_pylist()] == [r["id"] for r in more]


def test_a_full_disk_under_the_output_keeps_the_previous_output(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch,
        api_key: str) -> None:
    url, sim = simulator
    rows_ = bulky_rows(200)
    write_csv(rows_[:3], tmp_path / "in.csv")
    job = write_job("in.csv", state={"path": "state/job.sqlite"})
    assert run_batch(job, "--base-url", url).returncode == 0
    output = tmp_path / "out.parquet"
    previous = output.read_bytes()
    write_csv(rows_, tmp_path / "in.csv")
    assert run_batch(job, "--base-url", url, "--limit", "200").returncode == 0  # every answer stored
    output.write_bytes(previous)
    sent = len(sim.log)

    capped = run_capped(job, url, api_key, tmp_path, max_file_bytes=100_000)  # < the new output

    assert capped.returncode == 3, capped.stderr
    assert "Traceback" not in capped.stderr, capped.stderr
    assert "could not write the output" in capped.stderr and "free space" in capped.stderr.lower()
    assert output.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    assert len(sim.log) == sent, "the answers were asked again"
