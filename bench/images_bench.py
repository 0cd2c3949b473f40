"""Memory with large images: peak RSS of `python -m batch run` against rows and concurrency.

    python bench/images_bench.py [--rows 500 1500 3000] [--concurrency 8 64]

Each row names a 1 MB image file in the job's image directory (20 distinct files, so the disk stays
small; the prompt names the row, so every row is its own request and reads its file). Requests go to
bench/fastserver.py, which answers at once: what is measured is what batch holds, not the server.
Peak RSS is the run's whole-life maximum resident set (GNU time, bench/gnutime.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from gnutime import run_measured
from pacing import fast_server

FILES = 20
IMAGE_BYTES = 1 << 20


def make_job(d: Path, images: Path, rows: int, concurrency: int) -> Path:
    images.mkdir(exist_ok=True)
    for i in range(FILES):
        path = images / f"img{i}.png"
        if not path.exists():
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(IMAGE_BYTES - 8))
    with (d / "in.csv").open("w") as f:
        f.write("id,photo\n")
        for i in range(rows):
            f.write(f"{i},img{i % FILES}.png\n")
    (d / "job.toml").write_text(f"""
[input]
path = "in.csv"
[task]
model = "meta-llama/llama-4-scout-17b-16e-instruct"
prompt = "Describe photo ${{id}}"
prompt-images = "photo"
image-dir = "{images}"
max-new-tokens = 20
[limits]
requests-per-minute = 10000000
tokens-per-minute = 100000000000
concurrency = {concurrency}
request-timeout = 60
[output]
path = "out.parquet"
""")
    return d / "job.toml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="*", default=[500, 1500, 3000])
    ap.add_argument("--concurrency", type=int, nargs="*", default=[8, 64])
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; rows naming 1 MB image files")
    print("| rows | concurrency | wall s | rows/s | peak RSS MB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, fast_server() as url:
        for conc in args.concurrency:
            for rows in args.rows:
                d = Path(tmp) / f"r{rows}c{conc}"
                d.mkdir()
                job = make_job(d, Path(tmp) / "images", rows, conc)
                t0 = time.perf_counter()
                proc, peak = run_measured([sys.executable, "-m", "batch", "run", str(job), "-q", "--base-url",
                                           url], env={**os.environ, "GROQ_API_KEY": "gsk_bench"},
                                          capture_output=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    sys.exit(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
                json.loads((d / "out.parquet.report.json").read_text())  # the run wrote its report
                print(f"| {rows:,} | {conc} | {wall:.1f} | {rows / wall:,.0f} | {peak:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
