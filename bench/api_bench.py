"""The Python door's cost next to the command line's, and its memory on a long Arrow stream.

    python bench/api_bench.py [--rows 20000 100000] [--stream-rows 0]

Against bench/fastserver.py (an instant chat endpoint), the same job over the same N rows runs once
through `python -m batch run JOB` and once through `batch.run(df, ...)` in a fresh process, each with a
fresh store. Wall and CPU are measured around the whole process (imports included), so the table
shows what a user pays per row through each door. `--stream-rows N` also runs `batch.run` over a
RecordBatchReader of N generated rows (never a table in memory) and reports peak RSS. Prints a table;
record results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
JOB = """
[input]
path = "in.parquet"
[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise this support ticket in one sentence: ${{ticket}}"
max-new-tokens = 60
[limits]
requests-per-minute = 100000000
tokens-per-minute = 100000000000
concurrency = 64
[api]
base-url = "{url}"
[output]
path = "out.parquet"
"""
API = """
import sys, resource
import pandas as pd
import batch
df = pd.read_parquet(sys.argv[1])
out = batch.run(df, model="openai/gpt-oss-20b",
                prompt="Summarise this support ticket in one sentence: ${ticket}", max_new_tokens=60,
                requests_per_minute=100000000, tokens_per_minute=100000000000, concurrency=64,
                base_url=sys.argv[2], state=sys.argv[3], progress=False)
assert len(out) == len(df) and out["error"].isna().all()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
STREAM = """
import sys, resource
import pyarrow as pa
import batch
n = int(sys.argv[1])
schema = pa.schema([("id", pa.int64()), ("ticket", pa.string())])
def chunks():
    for start in range(0, n, 10_000):
        ids = list(range(start, min(n, start + 10_000)))
        yield pa.record_batch([pa.array(ids), pa.array([f"Ticket {i}: export fails" for i in ids])], schema)
reader = pa.RecordBatchReader.from_batches(schema, chunks())
out = batch.run(reader, model="openai/gpt-oss-20b", prompt="Summarise: ${ticket}", max_new_tokens=60,
                requests_per_minute=100000000, tokens_per_minute=100000000000, concurrency=64,
                base_url=sys.argv[2], state=sys.argv[3], progress=False)
assert out.num_rows == n
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_input(path: Path, rows: int) -> None:
    text = [f"Ticket {i}: the export to CSV fails with a timeout after {i % 97} minutes" for i in range(rows)]
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()), "ticket": text}), path)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--stream-rows", type=int, nargs="*", default=[])
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "fastserver.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/openai/v1"
    env = {**os.environ, "GROQ_API_KEY": "gsk_bench", "PYTHONPATH": str(HERE.parent)}
    print(f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    print("| rows | door | wall s | CPU s | µs/row wall | µs/row CPU | API/CLI wall |")
    print("|---|---|---|---|---|---|---|")
    try:
        time.sleep(0.5)
        for rows in args.rows:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                make_input(d / "in.parquet", rows)
                (d / "job.toml").write_text(JOB.format(url=url), encoding="utf-8")
                cli = timed([sys.executable, "-m", "batch", "run", "job.toml", "-q"], d, env)
                (d / "api.py").write_text(API, encoding="utf-8")
                api = timed([sys.executable, "api.py", "in.parquet", url, str(d / "api.sqlite")], d, env)
                for name, (wall, cpu, _) in (("command line", cli), ("batch.run", api)):
                    ratio = f"{api[0] / cli[0]:.3f}" if name == "batch.run" else ""
                    print(f"| {rows:,} | {name} | {wall:.2f} | {cpu:.2f} | {wall / rows * 1e6:.0f} | "
                          f"{cpu / rows * 1e6:.0f} | {ratio} |")
        for rows in args.stream_rows:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                (d / "stream.py").write_text(STREAM, encoding="utf-8")
                wall, cpu, rss = timed([sys.executable, "stream.py", str(rows), url, str(d / "s.sqlite")],
                                       d, env)
                print(f"| {rows:,} | batch.run(RecordBatchReader) | {wall:.2f} | {cpu:.2f} | "
                      f"{wall / rows * 1e6:.0f} | {cpu / rows * 1e6:.0f} | peak RSS {rss} MB |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
