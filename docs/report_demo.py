"""Draw docs/report.png: the HTML report of a real run against the simulator, with faults and 429s.

    python docs/report_demo.py [--rows 900] [--keep DIR]

Three runs of one job over a growing table (so the cost history has bars), against a simulator
whose requests-per-minute limit is below the job's (and drops further half a minute into the last
run, as when another job starts spending the same budget), that drops and breaks some requests;
the report of the last run is opened in headless Chromium and its top part saved as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from chromium import screenshot  # noqa: E402

from batch.sim import SimConfig, Simulator  # noqa: E402

JOB = """[input]
path = "in.csv"
key = "id"

[task]
model = "openai/gpt-oss-20b"
prompt = "Rewrite this experience using the STAR method:\\n\\n${experience}"
max-new-tokens = 100

[limits]
requests-per-minute = 1200
tokens-per-minute = 400000
concurrency = 16
max-attempts = 3
request-timeout = 5

[output]
path = "out.parquet"
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=900)
    p.add_argument("--keep", type=Path, help="run in this folder and keep it")
    p.add_argument("--png", type=Path, default=HERE / "report.png")
    args = p.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="batch-report-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    # The server allows 900 requests a minute; the job asks for 1,200 and learns the real figure
    # from the 429s. 6% of requests fail (5xx, dropped connections, broken bodies) and are retried.
    sim = Simulator(SimConfig(rpm=900, tpm=10**9, rpd=10**9, tpd=10**12, burst_s=2.0, latency_ms=120,
                              jitter_ms=400, fault_rate=0.06, faults=("500", "503", "drop", "malformed"),
                              seed=7))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
    (folder / "job.toml").write_text(JOB, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "GROQ_API_KEY": "gsk_demo"}
    for n in (args.rows // 6, args.rows // 3, args.rows):
        if n == args.rows:  # half a minute into the last run, another job takes a third of the budget
            sim.config.rpm = 900
            threading.Timer(30, setattr, (sim.config, "rpm", 600)).start()
        with open(folder / "in.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "experience"])
            w.writerows([str(i), f"Led project {i}: moved {i % 17 + 2} services to a new platform "
                         "and cut costs" + " considerably" * (i % 5)] for i in range(n))
        proc = subprocess.run([sys.executable, "-m", "batch", "run", "job.toml", "--base-url", url, "-q"],
                              cwd=folder, env=env, capture_output=True, text=True, check=False)
        print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode)
    asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
    page = folder / "out.parquet.report.html"
    print(f"{page} ({page.stat().st_size / 1e3:.0f} kB)")
    screenshot(page, args.png, width=1100, height=1650)
    print(args.png)


if __name__ == "__main__":
    main()
