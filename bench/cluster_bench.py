"""One rate limit for a whole Dask cluster: does a run on 1, 2 and 4 workers use the whole budget and
never more, and what does a row cost on a cluster next to one machine?

    python bench/cluster_bench.py                 # every scenario (about 6 minutes)
    python bench/cluster_bench.py rpm overhead    # some of them

The simulator runs in this process (a thread with its own event loop), so its request log is the
server's view; steady state is read from it as in bench/pacing.py (between the first quarter of the
run and its last two seconds). The cluster (a scheduler here, worker processes on 127.0.0.1) is
started before the clock starts; `python -m batch run JOB --cluster tcp://...` runs as a child process,
as a user would run it. "one machine" is the same partitioned input without `--cluster` (the parts in
turn, one pacer). The overhead scenario runs against bench/fastserver.py (no limits, no latency): wall
time per row of the whole run, start-up included. Prints a Markdown table; results with date and
machine go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from distributed import Client, LocalCluster
from pacing import BIG, fast_server, simulator, steady

from batch.sim import SimConfig

PARTS = 8
SCENARIOS = {
    # name: (what, simulator, the job's [limits], rows, binding limit)
    "rpm": ("600 req/min, 3 s burst", SimConfig(rpm=600, tpm=BIG, burst_s=3, latency_ms=80, jitter_ms=40,
                                                 rpd=BIG, tpd=BIG),
            "requests-per-minute = 600\ntokens-per-minute = 100000000\nconcurrency = 16", 480, "rpm"),
    "tpm": ("30,000 tokens/min, 3 s burst", SimConfig(rpm=100_000, tpm=30_000, burst_s=3, latency_ms=80,
                                                       jitter_ms=40, rpd=BIG, tpd=BIG),
            "requests-per-minute = 100000\ntokens-per-minute = 30000\nconcurrency = 16", 320, "tpm"),
}


def write_input(folder: Path, rows: int, words: int) -> None:
    folder.mkdir()
    each = rows // PARTS
    for p in range(PARTS):
        ids = range(p * each, (p + 1) * each)
        pd.DataFrame({"id": list(ids), "ticket": [
            f"ticket {i}: " + " ".join(f"word{(i * 31 + j) % 997}" for j in range(words)) for i in ids]}
        ).to_parquet(folder / f"part-{p:03d}.parquet")


def run_job(d: Path, url: str, limits: str, rows: int, cluster: str | None, *, words: int = 20,
            max_new_tokens: int = 40) -> tuple[dict[str, object], float]:
    write_input(d / "in", rows, words)
    (d / "job.toml").write_text(f"""
[input]
path = "in"
[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise: ${{ticket}}"
max-new-tokens = {max_new_tokens}
[limits]
{limits}
request-timeout = 30
[output]
path = "out"
text-column = "answer"
""")
    argv = [sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q", "--base-url", url,
            *(["--cluster", cluster] if cluster else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env={**os.environ, "GROQ_API_KEY": "gsk_bench"}, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads((d / "out.report.json").read_text()), wall


def with_workers(n: int | None, fn: object) -> object:
    """`fn(address)` with a cluster of `n` workers (None: one machine, no cluster)."""
    assert callable(fn)
    if n is None:
        return fn(None)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = Client(cluster)  # type: ignore[no-untyped-call]
    try:
        return fn(cluster.scheduler_address)
    finally:
        client.close()  # type: ignore[no-untyped-call]
        cluster.close()


def label(n: int | None) -> str:
    return "one machine" if n is None else f"{n} worker{'s' if n > 1 else ''}"


def limit_scenario(name: str) -> None:
    what, sim_config, limits, rows, binding = SCENARIOS[name]
    for n in (None, 1, 2, 4):
        def go(address: str | None, n: int | None = n) -> None:
            with tempfile.TemporaryDirectory() as tmp, simulator(sim_config) as (url, sim):
                tpm_job = binding == "tpm"
                run_job(Path(tmp), url, limits, rows, address, words=60 if tpm_job else 20,
                        max_new_tokens=150 if tpm_job else 40)
                rpm, tpm, n429, total = steady(sim)
            got, limit = (rpm, sim_config.rpm) if binding == "rpm" else (tpm, sim_config.tpm)
            unit = "req" if binding == "rpm" else "tokens"
            print(f"| {name} | {what} | {label(n)} | {got:,.0f} {unit}/min | {got / limit:.1%} "
                  f"| {n429} ({n429 / max(total, 1):.1%}) | {total:,} |", flush=True)
        with_workers(n, go)


def overhead() -> None:
    rows = 4000
    limits = "requests-per-minute = 10000000\ntokens-per-minute = 1000000000\nconcurrency = 64"
    for n in (None, 1, 2, 4):
        def go(address: str | None, n: int | None = n) -> None:
            with tempfile.TemporaryDirectory() as tmp, fast_server() as url:
                _, wall = run_job(Path(tmp), url, limits, rows, address)
            print(f"| overhead | no limits, no latency, {rows:,} rows in {PARTS} parts | {label(n)} | "
                  f"{rows / wall:,.0f} rows/s | {wall * 1000 / rows:.2f} ms/row | | |", flush=True)
        with_workers(n, go)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="*", default=[*SCENARIOS, "overhead"])
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print("| scenario | limit | where | achieved (steady) | share of the limit | 429s | requests |")
    print("|---|---|---|---|---|---|---|")
    for name in args.scenarios:
        overhead() if name == "overhead" else limit_scenario(name)


if __name__ == "__main__":
    main()
