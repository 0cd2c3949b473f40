"""Does a run use the whole rate budget and never more? Scenarios against the Groq simulator.

    python bench/pacing.py                    # every scenario (about 5 minutes)
    python bench/pacing.py rpm tpm            # some of them
    python bench/pacing.py memory --big       # memory at 10k / 100k / 1M rows (1M takes ~10 minutes)

The simulator runs in this process (a thread with its own event loop), so its request log gives the
server's view: what it admitted, when, and how many tokens it charged. `python -m batch run` runs as
a child process on the other core, as a user would run it. Steady state is measured from the server
log between the first quarter of the run and its last two seconds. Prints a Markdown table; results
with date and machine go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gnutime import run_measured

from batch.sim import SimConfig, Simulator


@contextmanager
def simulator(config: SimConfig) -> Iterator[tuple[str, Simulator]]:
    loop = asyncio.new_event_loop()
    sim = Simulator(config)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
    try:
        yield url, sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@dataclass
class Scenario:
    name: str
    what: str  # what the limit is, for the table
    sim: SimConfig
    limits: str  # the job's [limits] table body
    rows: int
    words: int = 20  # prompt length
    max_new_tokens: int = 40
    binding: str = "rpm"  # "rpm", "tpm" or "none": which server limit the ratio is against
    fast: bool = False  # against bench/fastserver.py instead of the simulator (overhead scenarios)


def write_input(path: Path, rows: int, words: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "ticket"])
        for i in range(rows):
            w.writerow([i, f"ticket {i}: " + " ".join(f"word{(i * 31 + j) % 997}" for j in range(words))])


def run_job(d: Path, url: str, sc: Scenario) -> tuple[dict[str, object], float, float, int]:
    write_input(d / "in.csv", sc.rows, sc.words)
    (d / "job.toml").write_text(f"""
[input]
path = "in.csv"
[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise: ${{ticket}}"
max-new-tokens = {sc.max_new_tokens}
[limits]
{sc.limits}
request-timeout = 30
[output]
path = "out.parquet"
text-column = "answer"
""")
    t0 = time.perf_counter()
    argv = [sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q", "--base-url", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc, peak = run_measured(argv, env={**os.environ, "GROQ_API_KEY": "gsk_bench"},
                              stderr=subprocess.PIPE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{sc.name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    report = json.loads((d / "out.parquet.report.json").read_text())
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the run's (and time's)
    return report, wall, cpu, int(peak * 1024)  # peak: the run's whole life, report drawing included


def steady(sim: Simulator) -> tuple[float, float, int, int]:
    """(requests/min, tokens/min) admitted in steady state, 429s, all requests — from the server log."""
    log = sim.log
    start, end = log[0].t, log[-1].t
    lo, hi = start + (end - start) / 4, end - 2.0
    ok = [e for e in log if e.status == 200 and lo <= e.t <= hi]
    minutes = max(hi - lo, 1e-9) / 60
    return len(ok) / minutes, sum(e.tokens for e in ok) / minutes, sum(e.status == 429 for e in log), len(log)


BIG = 10**9
SCENARIOS = {
    "rpm": Scenario("rpm", "600 req/min, 3 s burst", SimConfig(rpm=600, tpm=BIG, burst_s=3, latency_ms=80,
                                                             jitter_ms=40, rpd=BIG, tpd=BIG),
                    "requests-per-minute = 600\ntokens-per-minute = 100000000\nconcurrency = 16", rows=600),
    "tpm": Scenario("tpm", "30,000 tokens/min, 3 s burst",
                    SimConfig(rpm=100_000, tpm=30_000, burst_s=3, latency_ms=80, jitter_ms=40, rpd=BIG,
                              tpd=BIG),
                    "requests-per-minute = 100000\ntokens-per-minute = 30000\nconcurrency = 16", rows=400,
                    words=60, max_new_tokens=150, binding="tpm"),
    "learned": Scenario("learned", "30,000 tokens/min, limits not in the job",
                        SimConfig(rpm=1_000, tpm=30_000, burst_s=60, latency_ms=80, jitter_ms=40, rpd=BIG,
                                  tpd=BIG),
                        "concurrency = 16", rows=600, words=60, max_new_tokens=150, binding="tpm"),
    "learned-rpm": Scenario("learned-rpm", "120 req/min, limits not in the job",
                            SimConfig(rpm=120, tpm=BIG, burst_s=60, latency_ms=80, jitter_ms=40, rpd=BIG,
                                      tpd=BIG),
                            "concurrency = 16", rows=720),
    "latency": Scenario("latency", "1 s latency, concurrency 64",
                        SimConfig(rpm=BIG, tpm=BIG, latency_ms=1000, rpd=BIG, tpd=BIG),
                        "requests-per-minute = 1000000\ntokens-per-minute = 1000000000\nconcurrency = 64",
                        rows=1280, binding="none"),
    "overhead": Scenario("overhead", "no latency, no limits (fast server)",
                         SimConfig(rpm=BIG, tpm=BIG, rpd=BIG, tpd=BIG),
                         "requests-per-minute = 10000000\ntokens-per-minute = 1000000000\nconcurrency = 64",
                         rows=20_000, binding="none", fast=True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="*", default=[*SCENARIOS, "memory"])
    ap.add_argument("--big", action="store_true", help="memory scenario up to 1,000,000 rows")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print("| scenario | limit | achieved (steady) | ratio | 429s | requests | CPU s / 1k rows "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.scenarios:
        if name == "memory":
            for rows in (10_000, 100_000, *((1_000_000,) if args.big else ())):
                base = SCENARIOS["overhead"]
                sc = Scenario("memory", f"{rows:,} rows", base.sim, base.limits, rows=rows, binding="none",
                              fast=True)
                measure(sc)
            continue
        measure(SCENARIOS[name])


@contextmanager
def fast_server(*args: str) -> Iterator[str]:
    """bench/fastserver.py in a process of its own (`args`: more of its options); its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(__file__).with_name("fastserver.py")
    proc = subprocess.Popen([sys.executable, str(server), "--port", str(port), *args])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(5)


def measure(sc: Scenario) -> None:
    if sc.fast:
        with tempfile.TemporaryDirectory() as tmp, fast_server() as url:
            _, wall, cpu, rss = run_job(Path(tmp), url, sc)
        rpm = tpm = 0.0
        n429, total = 0, sc.rows
    else:
        with tempfile.TemporaryDirectory() as tmp, simulator(sc.sim) as (url, sim):
            _, wall, cpu, rss = run_job(Path(tmp), url, sc)
            rpm, tpm, n429, total = steady(sim)
    if sc.binding == "rpm":
        achieved, ratio = f"{rpm:,.0f} req/min", rpm / sc.sim.rpm
    elif sc.binding == "tpm":
        achieved, ratio = f"{tpm:,.0f} tokens/min", tpm / sc.sim.tpm
    else:
        achieved, ratio = f"{sc.rows / wall:,.0f} rows/s (wall, whole run)", None
    print(f"| {sc.name} | {sc.what} | {achieved} | {'' if ratio is None else f'{ratio:.1%}'} | "
          f"{n429} ({n429 / max(total, 1):.1%}) | {total:,} | {cpu * 1000 / sc.rows:.2f} "
          f"| {rss / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
