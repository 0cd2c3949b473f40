"""What batch mode costs on our side: preparing, uploading and merging N requests through the Batch API.

    python bench/batch_bench.py [--rows 10000 100000]

For each N: builds an input of N distinct rows, starts `python -m batch simulate` (a separate process,
so the run's figures are its own) with a fast Batch API (lines answered at 20,000/s, no validation or
finalizing delay), then times `python -m batch run JOB --mode batch` from start to finished output.
The simulator's answering time (lines / its rate) is reported apart; the rest of the wall time is ours
(rendering, writing the JSONL files, uploading, polling, downloading, merging into the store, writing
the output) plus the simulator's validating and building of result files on the same cores, so the
run's own CPU time is reported too. Prints a table; record results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from gnutime import run_measured

JOB = """
[input]
path = "in.parquet"
[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise this support ticket in one sentence: ${ticket}"
max-new-tokens = 60
[run]
mode = "batch"
poll-interval = 0.5
[output]
path = "out.parquet"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one(rows: int, folder: Path) -> dict[str, float]:
    tickets = [f"Ticket {i}: the printer on floor {i % 9} jams when printing {i % 97} pages."
               for i in range(rows)]
    pq.write_table(pa.table({"ticket": tickets}), folder / "in.parquet")
    (folder / "job.toml").write_text(JOB, encoding="utf-8")
    port = _free_port()
    sim = subprocess.Popen([sys.executable, "-m", "batch", "simulate", "--port", str(port),
                            "--batch-validate-s", "0", "--batch-finalize-s", "0",
                            "--batch-lines-per-s", "20000", "-q"],
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        env = {**os.environ, "GROQ_API_KEY": "gsk_bench"}
        started, cpu0 = time.monotonic(), _children_cpu()
        proc, peak = run_measured([sys.executable, "-m", "batch", "run", "job.toml", "--base-url",
                                   f"http://127.0.0.1:{port}/openai/v1", "-q"], cwd=folder, env=env,
                                  capture_output=True)
        wall, cpu = time.monotonic() - started, _children_cpu() - cpu0  # the run only: the simulator
        # is not waited for yet, so its CPU is not counted among the children
    finally:
        sim.terminate()
        sim.wait(10)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads((folder / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert pq.read_metadata(folder / "out.parquet").num_rows == rows
    answering = rows / 20000  # the simulator's answering time, at its configured rate
    files = len(re.findall(r"uploading", proc.stderr)) or report["batches"]
    return {"rows": rows, "batches": report["batches"], "files": files, "wall_s": wall,
            "sim_answering_s": answering, "ours_s": wall - answering,
            "ours_us_per_row": (wall - answering) / rows * 1e6, "cpu_us_per_row": cpu / rows * 1e6,
            "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    print("| rows | batches | wall | simulator answering | rest of wall | per row | run's CPU per row "
          "| peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            r = one(n, Path(tmp))
        print(f"| {n:,} | {r['batches']} | {r['wall_s']:.1f} s | {r['sim_answering_s']:.1f} s | "
              f"{r['ours_s']:.1f} s | {r['ours_us_per_row']:.0f} µs | {r['cpu_us_per_row']:.0f} µs | "
              f"{r['peak_rss_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
