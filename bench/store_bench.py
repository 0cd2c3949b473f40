"""What the store costs: bytes per answered row, and the time to resume over N answered rows.

    python bench/store_bench.py [--rows 1000000]

Builds an input of N rows, answers every row straight into the store (as a finished run would have
left it), then times `python -m batch run` on that job: a resume that finds every answer, sends
nothing (the base URL points at a closed loopback port, so any request would fail the run) and
rewrites the output. Twice: first from the store alone (it writes the recall beside the state, as
every run does), then as a re-run after a run, which finds each row's answer in the recall. Then
times the floor: a fresh Python that does with pyarrow alone what the resume must at least do — read
the input in chunks and write the same output (its answer columns read, chunk by chunk, from the
output the resume wrote, as the resume reads them from the store).
Prints a table with the ratio; record results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from gnutime import run_measured

from batch.job.config import load_job
from batch.records import Answer, Request
from batch.render.prompts import Renderer
from batch.store.answers import Store
from batch.tables.source import Source

JOB = """
[input]
path = "in.parquet"
[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise this support ticket in one sentence: ${ticket}"
max-new-tokens = 60
temperature = 0
[limits]
requests-per-minute = 1000000
tokens-per-minute = 100000000
[output]
path = "out.parquet"
text-column = "summary"
"""


def make_input(path: Path, rows: int, row_group: int) -> None:
    ids = pa.array(range(rows), pa.int64())
    text = pa.array([f"Ticket {i}: the export to CSV fails with a timeout after {i % 97} minutes on "
                     f"the reporting page; customer #{i * 7919 % 100003} is blocked." for i in range(rows)])
    pq.write_table(pa.table({"id": ids, "ticket": text}), path, row_group_size=row_group)


def fill_store(job_file: Path) -> float:
    job = load_job(job_file)
    renderer = Renderer(job.task)
    store = Store(job.state.path, flush_rows=20_000)
    store.begin_run()
    t0, row = time.perf_counter(), 0
    for batch in Source(job.input.path, job.input.format).chunks():
        for r in renderer.render_chunk(batch, row):
            assert isinstance(r, Request)
            store.put(Answer(fingerprint=r.fingerprint, text="A one-sentence summary of the ticket, "
                             "about as long as a real answer.", input_tokens=48, output_tokens=14,
                             total_tokens=62, finish_reason="stop", request_id=f"req_{row:026x}",
                             model=job.task.model, latency_s=0.412, queue_time=0.01, total_time=0.2,
                             attempts=1))
        row += batch.num_rows
    store.finish_run("{}")
    store.close()
    return time.perf_counter() - t0


FLOOR = """
import sys, pyarrow as pa, pyarrow.parquet as pq
src, answers, out = sys.argv[1:4]
ans = pq.ParquetFile(answers)
names = ans.schema_arrow.names[len(pq.ParquetFile(src).schema_arrow.names):]
w = None
it = ans.iter_batches(batch_size=4096, columns=names)
for chunk in pq.ParquetFile(src).iter_batches(batch_size=4096):
    extra = next(it)
    table = pa.RecordBatch.from_arrays([*chunk.columns, *extra.columns],
                                       names=[*chunk.schema.names, *extra.schema.names])
    w = w or pq.ParquetWriter(out, table.schema, compression="zstd")
    w.write_batch(table)
w.close()
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--row-group", type=int, default=1 << 20,
                    help="rows per Parquet row group of the input (pyarrow's default: 1Mi)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "job.toml").write_text(JOB)
        make_input(d / "in.parquet", args.rows, args.row_group)
        fill_s = fill_store(d / "job.toml")
        size = sum(p.stat().st_size for p in d.glob("out.parquet.state.sqlite*"))
        env = {**os.environ, "GROQ_API_KEY": "unused"}
        argv = [sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q",
                "--base-url", "http://127.0.0.1:9/v1"]
        # The first resume finds the answers in the store alone (the store was filled directly, as by
        # an older version, so no run left a recall beside it); it writes the recall, so the second
        # is a resume after a run of batch, the usual case.
        store_s, store_cpu, first = timed(argv, env)
        resume_s, resume_cpu, proc = timed(argv, env)
        _, resume_peak = run_measured(argv, env=env, capture_output=True)  # again, for its whole peak
        for p in (first, proc):
            if p.returncode != 0:
                sys.exit(f"resume failed ({p.returncode}):\n{p.stderr}")
        recall = d / "out.parquet.state.sqlite.recall"
        floor_s, _, floor = timed([sys.executable, "-c", FLOOR, str(d / "in.parquet"), str(d / "out.parquet"),
                                   str(d / "floor.parquet")], env)
        if floor.returncode != 0:
            sys.exit(f"floor failed:\n{floor.stderr}")
        out_rows = pq.ParquetFile(d / "out.parquet").metadata.num_rows
        assert out_rows == args.rows, out_rows
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"input row groups of {args.row_group:,} rows")
        print("| rows | store bytes | recall bytes | fill store s | resume s (0 requests) | resume CPU s "
              "| resume peak RSS MB | store alone: resume s / CPU s | pyarrow floor s | resume / floor "
              "| store alone / floor |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {args.rows:,} | {size:,} | {recall.stat().st_size:,} | {fill_s:.1f} | {resume_s:.2f} "
              f"| {resume_cpu:.2f} | {resume_peak:.0f} | {store_s:.2f} / {store_cpu:.2f} "
              f"| {floor_s:.2f} | {resume_s / floor_s:.1f}x | {store_s / floor_s:.1f}x |")

if __name__ == "__main__":
    main()
