"""The overhead a row of each door next to the command line, against the instant local server.

    python bench/doors.py [--rows 20000] [--dask-rows N] [--only cli pandas polars pyarrow sql dask]

The same rows (id, ticket; "Summarise: <ticket>", at most 200 new tokens, concurrency 64, no limit in
the way) go through each door against bench/fastserver.py (a separate process that answers at once),
so what is measured is batch and its door, not a server:
- `cli`: `python -m batch run JOB.toml -q` over the Parquet file, writing out.parquet and its report.
- `pandas`, `polars`, `pyarrow`: `batch.run(frame, ...)`, the frame read from that file first.
- `sql`: `batch.register_duckdb(con, "ask", ...)`, `SELECT ask(prompt) FROM t` fetched as Arrow, and
  the registration closed; t a DuckDB table of the same prompts.
- `dask`: `batch.run(ddf, ...).compute()` (the answers brought back to the client), 8 partitions, on a
  LocalCluster of 2 worker processes (one thread each, 127.0.0.1) started in the child before the
  call. `--dask-rows` runs it on fewer rows.

Each door runs in fresh child processes, each door with its own answer cache (XDG_CACHE_HOME; the CLI
its own state file):
- "wall": the first run, the cache empty, as the parent sees the child: interpreter, imports, reading
  the input, (for Dask) starting the cluster, the call, exit: what a script pays. "vs CLI" compares it.
- "cached re-run": the same again, the cache as the first left it: nothing is sent.
- "the call alone": a third child warms up first (the door once over one row of another prompt, into
  a store of its own: imports done, Dask's workers warm), then times the call over the rows with an
  empty cache, then the same call again (cached). For the CLI, the report's elapsed_s of the first and
  second runs (the run without the interpreter's start-up and imports).
Prints a Markdown table; results with date and machine go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MODEL = "openai/gpt-oss-20b"
DOORS = ("cli", "pandas", "polars", "pyarrow", "sql", "dask")
OPTIONS: dict[str, Any] = {"model": MODEL, "prompt": "Summarise: ${ticket}", "max_new_tokens": 200,
                           "requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000,
                           "concurrency": 64, "request_timeout": 30, "progress": False}
JOB = """
[input]
path = "{input}"
[task]
model = "{model}"
prompt = "Summarise: ${{ticket}}"
max-new-tokens = 200
[limits]
requests-per-minute = 10000000
tokens-per-minute = 1000000000
concurrency = 64
request-timeout = 30
[output]
path = "out.parquet"
text-column = "answer"
"""


def write_input(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tickets = [f"ticket {i}: " + " ".join(f"word{(i * 31 + j) % 997}" for j in range(20))
               for i in range(rows)]
    pq.write_table(pa.table({"id": list(range(rows)), "ticket": tickets}), path)


# -- the child: one door, its own timing on stdout ---------------------------------------------------
@contextlib.contextmanager
def door_context(door: str) -> Iterator[None]:
    """The Dask door's cluster (two worker processes, the client in use); nothing for the others."""
    if door != "dask":
        yield
        return
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster):  # type: ignore[no-untyped-call]
        yield


def load(door: str, data: Path, rows: int | None = None) -> Any:
    """The rows as the door's user holds them (the first `rows` of them)."""
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    if rows is not None:
        table = table.slice(0, rows)
    if door == "pandas":
        return table.to_pandas()
    if door == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if door == "pyarrow":
        return table
    if door == "sql":
        import duckdb

        con = duckdb.connect()
        con.register("given", table)
        con.execute("CREATE TABLE t AS SELECT id, 'Summarise: ' || ticket AS prompt FROM given")
        con.unregister("given")
        return con
    import dask.dataframe as dd

    return dd.from_pandas(table.to_pandas(), npartitions=min(8, len(table)))  # type: ignore[no-untyped-call]


def ask(door: str, data: Any, options: dict[str, Any]) -> int:
    """One call of the door over `data`; how many rows came back answered."""
    import batch

    if door == "sql":
        sql_options = {k: v for k, v in options.items() if k not in ("prompt", "progress")}
        if options["prompt"].startswith("Warm-up"):
            sql_options["prompt"] = "Warm-up: ${prompt}"
        with batch.register_duckdb(data, "ask", **sql_options):
            result: Any = data.execute("SELECT ask(prompt) AS answer FROM t")
            # duckdb 2 names it to_arrow_table; 1.x fetch_arrow_table
            answers = (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()
        return int(len(answers) - answers.column("answer").null_count)
    out = batch.run(data, **options)
    if door == "dask":
        out = out.compute()
    if door == "pyarrow":
        return int(len(out) - out.column("text").null_count)
    if door == "polars":
        return int(out["text"].is_not_null().sum())
    return int(out["text"].notna().sum())


def child(door: str, data: Path, url: str, warm: bool) -> dict[str, Any]:
    options = {**OPTIONS, "base_url": url}
    with door_context(door), tempfile.TemporaryDirectory(prefix="warm-") as tmp:
        rows = load(door, data)
        if not warm:
            t0 = time.perf_counter()
            ok = ask(door, rows, options)
            return {"call_s": time.perf_counter() - t0, "ok": ok}
        # Another prompt into a store of its own: the door's imports and the workers warm, nothing of
        # the timed calls' answers in the cache.
        store = Path(tmp) / ("warm" if door == "dask" else "warm.sqlite")
        ask(door, load(door, data, 1), {**options, "prompt": "Warm-up: ${ticket}", "state": store})
        t0 = time.perf_counter()
        ok = ask(door, rows, options)
        t1 = time.perf_counter()
        ok_again = ask(door, rows, options)
        t2 = time.perf_counter()
        return {"call_s": t1 - t0, "again_s": t2 - t1, "ok": min(ok, ok_again)}


# -- the parent -------------------------------------------------------------------------------------
def run_child(door: str, d: Path, data: Path, url: str, rows: int, *, warm: bool = False
              ) -> tuple[float, dict[str, Any]]:
    """(wall s, the child's timings) of one child process running `door`, in folder `d` (its cache and
    state); every row must come back answered."""
    env = {**os.environ, "GROQ_API_KEY": "gsk_bench", "XDG_CACHE_HOME": str(d / "cache")}
    if door == "cli":
        job = d / "job.toml"
        job.write_text(JOB.format(input=data, model=MODEL))
        argv = [sys.executable, "-m", "batch", "run", str(job), "-q", "--base-url", url]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", door, "--data", str(data),
                "--url", url, *(["--warm"] if warm else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=d, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{door}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    if door == "cli":
        report = json.loads((d / "out.parquet.report.json").read_text())
        got = {"ok": report["rows_ok"], "call_s": float(report["elapsed_s"])}
    else:
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["ok"] != rows:
        raise SystemExit(f"{door}: {got['ok']} of {rows} rows answered")
    return wall, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dask-rows", type=int, default=None, help="rows for the Dask door (default --rows)")
    ap.add_argument("--only", nargs="*", default=list(DOORS), choices=DOORS)
    ap.add_argument("--child", choices=DOORS[1:], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.data), args.url, args.warm)), flush=True)
        return

    from pacing import fast_server  # bench/pacing.py: bench/fastserver.py as a separate process

    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print("| door | rows | wall s | µs/row | vs CLI | cached re-run µs/row | the call alone, µs/row "
          "(first / cached) |")
    print("|---|---|---|---|---|---|---|")
    # The imports each door needs, once, so that no child pays for a cold disk cache.
    subprocess.run([sys.executable, "-c", "import batch.doors.python, pandas, polars, pyarrow, duckdb, "
                    "dask.dataframe, distributed"], check=True)
    cli_per_row: float | None = None
    with tempfile.TemporaryDirectory(prefix="doors-") as tmp, fast_server() as url:
        root = Path(tmp)
        for door in sorted(args.only, key=lambda x: x != "cli"):  # the CLI first: the others' yardstick
            rows = (args.dask_rows or args.rows) if door == "dask" else args.rows
            data = root / f"in-{rows}.parquet"
            if not data.exists():
                write_input(data, rows)
            (d := root / door).mkdir()
            wall, first = run_child(door, d, data, url, rows)
            again_wall, again = run_child(door, d, data, url, rows)
            if door == "cli":
                call, call_again = first["call_s"], again["call_s"]
            else:
                (w := root / f"{door}-warm").mkdir()
                _, warm = run_child(door, w, data, url, rows, warm=True)
                call, call_again = warm["call_s"], warm["again_s"]
            per_row = wall * 1e6 / rows
            if door == "cli":
                cli_per_row = per_row
            ratio = f"{per_row / cli_per_row:.2f}x" if cli_per_row else ""
            us = [x * 1e6 / rows for x in (again_wall, call, call_again)]
            print(f"| {door} | {rows:,} | {wall:.2f} | {per_row:,.0f} | {ratio} | {us[0]:,.0f} | "
                  f"{us[1]:,.0f} / {us[2]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
