"""End to end: `python -m batch run` as a user runs it, against the Groq simulator on a real socket.

Each test asserts what a user depends on: every input row comes back once, in order, unchanged, with
the answer that was computed from *that* row's prompt (the simulator's answer is a pure function of
the request: "[model] " + the last user message), exact token counts, the documented exit code, and
nothing paid for twice. Hostile rows come from `nasty.py`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import HANG_GUARD_S, MODEL, REPO, BackgroundLoop, LocalServer, cli_env, completion, wait_until
from nasty import COLUMNS, nasty_rows, write_csv, write_jsonl, write_parquet

from batch.sim import LogEntry, Simulator, count_prompt_tokens, count_tokens, sim_answer

Rows = list[dict[str, Any]]
StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]

DEFAULT_SYSTEM = "You are a helpful assistant."
# `$$` is a literal `$`; braces are plain text; values are spliced in once and never re-scanned.
PROMPT = "Candidate ${name} ($$5, {0} {braces}):\n${experience}"
FAULTS = ("500", "502", "503", "498", "drop", "malformed")
FROZEN_MS = 600_000  # a simulator latency that answers nothing new within a test: the server is frozen
CONTRACT_COLUMNS = ("input_tokens", "output_tokens", "total_tokens", "finish_reason", "error", "attempts",
                    "latency_s", "request_id", "model")
WRITERS = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl}


def render(row: dict[str, Any]) -> str:
    """PROMPT rendered by hand, for the expected answer."""
    return f"Candidate {row['name']} ($5, {{0}} {{braces}}):\n{row['experience']}"


def messages_for(row: dict[str, Any], system: str = DEFAULT_SYSTEM) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": render(row)}]


def distinct_prompts(rows: Sequence[dict[str, Any]]) -> int:
    return len({render(r) for r in rows if r["experience"] is not None})


def plain_rows(n: int, start: int = 0, tag: str = "plain") -> Rows:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"{tag} experience number {i}"}
            for i in range(start, start + n)]


def read_output(path: Path) -> tuple[list[str], Rows]:
    """(column names, rows) of a Parquet or CSV output; CSV text as written (unquoted empty = null)."""
    if path.suffix == ".csv":
        text = [*COLUMNS, "text", "error", "finish_reason", "request_id", "model"]
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(text, pa.string()),
                                       strings_can_be_null=True, null_values=[""],
                                       quoted_strings_can_be_null=False)
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                               convert_options=convert)
    else:
        table = pq.read_table(path)
    return table.column_names, table.to_pylist()


def chat_log(sim: Simulator) -> list[LogEntry]:
    return list(sim.log)


def answered_twice(sim: Simulator) -> list[str]:
    """Request bodies that got a real answer (a 200 that was not a fault) more than once."""
    counts = Counter(e.body_sha256 for e in chat_log(sim)
                     if e.status == 200 and e.fault is None and e.body_sha256 is not None)
    return [sha for sha, n in counts.items() if n > 1]


def check_columns(names: list[str], text_column: str = "text") -> None:
    assert names[:len(COLUMNS)] == list(COLUMNS), "input columns first, in input order"
    assert names[len(COLUMNS)] == text_column
    positions = [names.index(c) for c in CONTRACT_COLUMNS]  # each present ...
    assert positions == sorted(positions)  # ... in the documented order


def check_rows(rows: Sequence[dict[str, Any]], out: Sequence[dict[str, Any]], *, faults: bool = False,
               text_column: str = "text", batch: bool = False) -> None:
    """Every input row once, in order, unchanged, with the answer computed from its own prompt."""
    assert len(out) == len(rows)
    for i, (src, got) in enumerate(zip(rows, out, strict=True)):
        where = f"row {i} ({src['id']})"
        assert {k: got[k] for k in COLUMNS} == src, f"{where}: input values changed"
        if src["experience"] is None:
            assert got[text_column] is None, where
            assert got["error"] and "experience" in got["error"], f"{where}: {got['error']!r}"
            continue
        msgs = messages_for(src)
        answer = sim_answer({"model": MODEL, "messages": msgs})
        assert got["error"] is None, f"{where}: {got['error']}"
        assert got[text_column] == answer, f"{where}: answer of another row, or altered"
        assert got[text_column].startswith(f"[{MODEL}] ")
        assert src["experience"] in got[text_column]
        assert got["input_tokens"] == count_prompt_tokens(msgs), where
        assert got["output_tokens"] == count_tokens(answer), where
        assert got["total_tokens"] == got["input_tokens"] + got["output_tokens"], where
        assert got["finish_reason"] == "stop", where
        assert got["model"] == MODEL, where
        assert got["request_id"], where
        assert got["attempts"] >= 1, where
        if not batch:  # a Batch API answer has no round trip of its own to time: null
            assert got["latency_s"] is not None and got["latency_s"] >= 0, where
    if faults:
        assert max(o["attempts"] or 0 for o in out) > 1, "faults were injected but nothing was retried"


def expected_exit(rows: Sequence[dict[str, Any]]) -> int:
    return 1 if any(r["experience"] is None for r in rows) else 0


# -- 1, 2: hostile rows through faults, from every input format ------------------------------------------

def test_nasty_csv_with_faults(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                               run_batch: RunBatch) -> None:
    rows = nasty_rows(300)
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim(fault_rate=0.08, faults=FAULTS, seed=3)
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"request-timeout": 2})

    proc = run_batch(job, "--base-url", url)

    assert any(r["experience"] is None for r in rows)  # the nasty set has nulls: some rows must fail
    assert proc.returncode == expected_exit(rows) == 1, proc.stderr
    names, out = read_output(tmp_path / "out.parquet")
    check_columns(names)
    check_rows(rows, out, faults=True)
    assert any(e.fault for e in chat_log(sim)), "the simulator injected no fault"
    assert answered_twice(sim) == [], "a request was paid for twice"
    assert sum(e.status == 200 and e.fault is None for e in chat_log(sim)) == distinct_prompts(rows)
    # A value holding `${name}` reaches the model as written, not as the row's name.
    templated = [o for o in out if o["experience"] == "${name}"]
    assert templated and templated[0]["text"].endswith("\n${name}")
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert report["rows"] == len(rows)
    assert report["rows_failed"] == sum(r["experience"] is None for r in rows)


def test_hanging_requests_time_out_and_are_retried(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                                  run_batch: RunBatch) -> None:
    rows = nasty_rows(60, seed=5)
    write_csv(rows, tmp_path / "in.csv")
    # A hang lasts 10 minutes: a run that waited for one would not end within the hang guard.
    url, sim = start_sim(fault_rate=0.08, faults=("hang",), hang_s=600, seed=11)
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"request-timeout": 1})

    proc = run_batch(job, "--base-url", url, timeout=HANG_GUARD_S)

    assert proc.returncode == expected_exit(rows), proc.stderr
    wait_until(lambda: sim.in_flight == 0, "the simulator to see the cut requests' clients gone")
    hangs = [e.status for e in chat_log(sim) if e.fault == "hang"]
    assert hangs and set(hangs) == {0}, "a hung request was not cut by request-timeout"
    names, out = read_output(tmp_path / "out.parquet")
    check_columns(names)
    check_rows(rows, out, faults=True)


@pytest.mark.parametrize(("fmt", "output"), [("parquet", "out.parquet"), ("jsonl", "out.parquet"),
                                             ("jsonl", "out.csv")])
def test_nasty_parquet_and_jsonl(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                 run_batch: RunBatch, fmt: str, output: str) -> None:
    rows = nasty_rows(120, seed=1)
    WRITERS[fmt](rows, tmp_path / f"in.{fmt}")
    url, sim = start_sim(fault_rate=0.05, faults=FAULTS, seed=5)
    job = write_job(f"in.{fmt}", task={"prompt": PROMPT}, output={"path": output},
                    limits={"request-timeout": 2})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == expected_exit(rows), proc.stderr
    names, out = read_output(tmp_path / output)
    check_columns(names)
    check_rows(rows, out)
    assert answered_twice(sim) == []


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_many_batches_keep_order_row_numbers_and_shared_answers(tmp_path: Path,
                                                                 simulator: tuple[str, Simulator],
                                                                 write_job: WriteJob, run_batch: RunBatch,
                                                                 fmt: str) -> None:
    """4,500 rows (several record batches: > 1 MB of CSV, > 4,096 rows) with 40 distinct prompts."""
    url, sim = simulator
    rows: Rows = [{"id": str(i), "name": f"name {i % 5}",
                   "experience": None if i % 997 == 0 else f"experience {i % 8}",
                   "pad": f"{i}:" + "p" * 300} for i in range(4500)]
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    proc = run_batch(write_job(path.name, task={"prompt": PROMPT}), "--base-url", url)

    assert proc.returncode == 1, proc.stderr
    assert len(chat_log(sim)) == 40, "a prompt shared by many rows was sent more than once"
    out = read_output(tmp_path / "out.parquet")[1]
    assert len(out) == len(rows)
    for i, (src, got) in enumerate(zip(rows, out, strict=True)):
        assert {k: got[k] for k in src} == src, f"row {i} changed or moved"
        if src["experience"] is None:
            assert got["text"] is None and re.search(rf"\brow {i + 1}\b", got["error"]), got["error"]
        else:
            assert got["text"] == sim_answer({"model": MODEL, "messages": messages_for(src)}), f"row {i}"


# -- 3, 4: the key: never written anywhere, and a wrong one ends the run at once ---------------------------

def test_secret_never_leaves_the_environment(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                             run_batch: RunBatch, api_key: str) -> None:
    rows = nasty_rows(60, seed=2)
    write_csv(rows, tmp_path / "in.csv")
    url, _ = start_sim(api_key=api_key, fault_rate=0.1, faults=FAULTS, seed=1)
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"request-timeout": 2})
    wrong = api_key.replace("TESTSECRET", "WRONGSECRET")

    ok = run_batch(job, "--base-url", url, "-v")
    # A fresh job (nothing in its store yet), so the wrong key is actually sent.
    other = write_job("in.csv", name="other.toml", task={"prompt": PROMPT}, output={"path": "other.parquet"})
    bad = run_batch(other, "--base-url", url, "-v", key=wrong)

    assert ok.returncode == expected_exit(rows), ok.stderr
    assert bad.returncode == 4, bad.stderr
    produced = [p.name for p in tmp_path.iterdir()]
    assert "out.parquet" in produced and any(n.endswith(".state.sqlite") for n in produced)
    assert any(n.endswith(".report.json") for n in produced)
    for secret in (api_key, wrong):
        for proc in (ok, bad):
            assert secret not in proc.stdout + proc.stderr
        hits = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert hits == [], f"the key was written to {hits}"


def test_bad_key_stops_at_once(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                               run_batch: RunBatch) -> None:
    write_csv(plain_rows(60), tmp_path / "in.csv")
    url, sim = start_sim(api_key="right")
    job = write_job("in.csv", limits={"concurrency": 4})
    (tmp_path / "out.parquet").write_bytes(b"the previous output")

    proc = run_batch(job, "--base-url", url, key="wrong")

    assert proc.returncode == 4, proc.stderr
    assert "401" in proc.stderr and "api key" in proc.stderr.lower()
    # The models check (GET /models) meets the 401 before any chat request is sent.
    assert chat_log(sim) == []
    assert (tmp_path / "out.parquet").read_bytes() == b"the previous output", "a failed run touched it"


# -- 5: models that cannot answer ---------------------------------------------------------------------------

def test_decommissioned_model_is_refused_before_sending(tmp_path: Path, simulator: tuple[str, Simulator],
                                                        write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(plain_rows(5), tmp_path / "in.csv")
    job = write_job("in.csv", task={"model": "llama-3.1-8b-instant"})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    assert "decommissioned" in proc.stderr and "openai/gpt-oss-20b" in proc.stderr
    assert chat_log(sim) == []
    assert not (tmp_path / "out.parquet").exists()


def test_unknown_model_is_refused_before_sending(tmp_path: Path, simulator: tuple[str, Simulator],
                                                 write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(plain_rows(50), tmp_path / "in.csv")
    job = write_job("in.csv", task={"model": "acme/no-such-model"}, limits={"concurrency": 3})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    assert "acme/no-such-model" in proc.stderr and "openai/gpt-oss-20b" in proc.stderr  # what is served
    assert chat_log(sim) == []
    assert not (tmp_path / "out.parquet").exists()


# -- 6: invalid jobs send nothing ---------------------------------------------------------------------------

INVALID: dict[str, tuple[dict[str, Any], str | None, list[str]]] = {
    # name: (job overrides, input CSV text (None: the default one), fragments the message must hold)
    "unknown key": ({"task": {"temprature": 0.5}}, None, ["temprature", "did you mean 'temperature'"]),
    "temperature 3": ({"task": {"temperature": 3}}, None, ["temperature", "between 0 and 2"]),
    "template column missing": ({"task": {"prompt": "${experience} at ${company}"}}, None,
                                ["'company'", "'id', 'name', 'experience'"]),
    "text column clash": ({"output": {"text-column": "name"}}, None, ["'name'"]),
    "answer column clash": ({}, "id,name,experience,attempts\n1,a,b,3\n", ["'attempts'"]),
    "missing input": ({"input": {"path": "nope.csv"}}, None, ["nope.csv"]),
    "malformed csv": ({}, "id,name,experience\n1,a,b\n2,c,d,e\n3,f,g\n", ["in.csv"]),
    "bad base url": ({"api": {"base-url": "ftp://127.0.0.1/v1"}}, None, ["base-url"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_job_exits_2_and_sends_nothing(tmp_path: Path, simulator: tuple[str, Simulator],
                                               write_job: WriteJob, run_batch: RunBatch, case: str) -> None:
    overrides, csv_text, fragments = INVALID[case]
    url, sim = simulator
    if csv_text is None:
        write_csv(plain_rows(3), tmp_path / "in.csv")
    else:
        (tmp_path / "in.csv").write_text(csv_text, encoding="utf-8")
    job = write_job("in.csv", **overrides)

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert chat_log(sim) == []
    assert not (tmp_path / "out.parquet").exists()


def test_malformed_jsonl_names_the_line(tmp_path: Path, simulator: tuple[str, Simulator],
                                        write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    (tmp_path / "in.jsonl").write_text('{"id": "1", "name": "a", "experience": "b"}\n{"id": "2", oops\n',
                                       encoding="utf-8")
    proc = run_batch(write_job("in.jsonl"), "--base-url", url)
    assert proc.returncode == 2, proc.stderr
    assert "in.jsonl:2" in proc.stderr
    assert chat_log(sim) == []


# -- 7: exit codes ------------------------------------------------------------------------------------------

def test_all_rows_ok_exits_0(tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob,
                             run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(30)
    write_csv(rows, tmp_path / "in.csv")
    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    assert len(chat_log(sim)) == 30


def test_row_over_the_job_tpm_fails_alone_and_is_not_sent(tmp_path: Path, simulator: tuple[str, Simulator],
                                                          write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(6)
    rows[3]["experience"] = "very long experience " * 15_000  # ~300 KB: ~79k tokens > 60k/min
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "max-new-tokens": 64},
                    limits={"tokens-per-minute": 60_000})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 1, proc.stderr
    out = read_output(tmp_path / "out.parquet")[1]
    assert out[3]["text"] is None and "tokens per minute" in out[3]["error"]
    check_rows(rows[:3] + rows[4:], out[:3] + out[4:])
    assert len(chat_log(sim)) == 5, "the oversized row was sent anyway"
    # A permanent failure is not re-sent by the next run.
    again = run_batch(job, "--base-url", url)
    assert again.returncode == 1 and len(chat_log(sim)) == 5


def test_row_the_server_finds_too_large_fails_alone(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                                    run_batch: RunBatch) -> None:
    url, sim = start_sim(tpm=5_000)  # the job's own limit is high: only Groq's 413 can catch it
    rows = plain_rows(5)
    # The first row: it takes the pacer's first turn, so it is sent before any answer (whose headers
    # say 5,000) could lower the run's own limit and have it refused here rather than by the server.
    rows[0]["experience"] = "x" * 40_000  # ~10k tokens
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "max-new-tokens": 64})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 1, proc.stderr
    out = read_output(tmp_path / "out.parquet")[1]
    assert out[0]["text"] is None and "tokens per minute" in out[0]["error"].lower()
    assert out[0]["attempts"] == 1, "a 413 was retried"
    check_rows(rows[1:], out[1:])
    assert [e.status for e in chat_log(sim)].count(413) == 1
    # Permanent failures stay failed on a re-run, unless asked: --retry-failed sends exactly them.
    assert run_batch(job, "--base-url", url).returncode == 1
    assert len(chat_log(sim)) == 5
    assert run_batch(job, "--base-url", url, "--retry-failed").returncode == 1
    assert len(chat_log(sim)) == 6
    assert [e.status for e in chat_log(sim)].count(413) == 2


def test_unwritable_output_is_refused_before_sending(tmp_path: Path, simulator: tuple[str, Simulator],
                                                     write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(plain_rows(5), tmp_path / "in.csv")
    (tmp_path / "results").write_text("a file where the output directory should be", encoding="utf-8")
    job = write_job("in.csv", output={"path": "results/out.parquet"}, state={"path": "state.sqlite"})

    proc = run_batch(job, "--base-url", url)

    assert "Traceback" not in proc.stderr, proc.stderr
    assert chat_log(sim) == [], "requests were paid for before the output turned out unwritable"
    assert proc.returncode == 2, proc.stderr


# -- 8: the store is a journal and a cache -------------------------------------------------------------------

def test_rerun_is_free_and_only_new_rows_are_sent(tmp_path: Path, simulator: tuple[str, Simulator],
                                                  write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = nasty_rows(100, seed=4)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    output = tmp_path / "out.parquet"

    first = run_batch(job, "--base-url", url)
    sent = len(chat_log(sim))
    _, out1 = read_output(output)
    output.unlink()
    second = run_batch(job, "--base-url", url)
    _, out2 = read_output(output)

    assert first.returncode == second.returncode == expected_exit(rows), first.stderr + second.stderr
    assert sent == distinct_prompts(rows)
    assert len(chat_log(sim)) == sent, "a re-run sent requests for rows already answered"
    assert out2 == out1
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert report["requests_sent"] == 0
    assert report["rows_from_store"] == sum(r["experience"] is not None for r in rows)
    check_rows(rows, out2)

    extra = plain_rows(25, start=100, tag="appended")
    with (tmp_path / "in.csv").open("a", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writerows(extra)
    third = run_batch(job, "--base-url", url)

    assert third.returncode == expected_exit(rows), third.stderr
    assert len(chat_log(sim)) == sent + 25
    _, out3 = read_output(output)
    assert out3[:100] == out1
    check_rows(rows + extra, out3)
    assert answered_twice(sim) == []


def test_duplicate_rows_are_sent_once(tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob,
                                      run_batch: RunBatch) -> None:
    url, sim = simulator
    base = plain_rows(20)
    rows = base + [{**r, "id": f"dup-{r['id']}"} for r in base] + [{**base[0], "id": "dup-again"}]
    write_csv(rows, tmp_path / "in.csv")

    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    assert len(chat_log(sim)) == 20
    out = read_output(tmp_path / "out.parquet")[1]
    check_rows(rows, out)


# -- 9: transient failures are retried by the next run ------------------------------------------------------

def test_exhausted_retries_fail_rows_and_the_next_run_resends_them(tmp_path: Path, start_sim: StartSim,
                                                                   write_job: WriteJob,
                                                                   run_batch: RunBatch) -> None:
    url, sim = start_sim(fault_rate=1.0, faults=("500", "503", "502", "drop", "malformed"))
    rows = plain_rows(12)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"max-attempts": 2, "request-timeout": 2})

    first = run_batch(job, "--base-url", url)

    assert first.returncode == 1, first.stderr
    out = read_output(tmp_path / "out.parquet")[1]
    assert len(out) == 12
    assert all(o["text"] is None and o["error"] and o["attempts"] == 2 for o in out), out
    assert len(chat_log(sim)) == 24

    sim.config.fault_rate = 0.0
    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    assert len(chat_log(sim)) == 24 + 12
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])


# -- rate limits the server reports ---------------------------------------------------------------------

def test_server_429s_are_waited_out(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                    run_batch: RunBatch) -> None:
    url, sim = start_sim(rpm=1200, burst_s=0.5)  # 10 at once, then 20 a second; the job paces faster
    rows = plain_rows(24)
    write_csv(rows, tmp_path / "in.csv")

    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    assert any(e.status == 429 for e in chat_log(sim))
    check_rows(rows, read_output(tmp_path / "out.parquet")[1], faults=True)
    assert answered_twice(sim) == []


def test_daily_quota_stops_resumably(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                     run_batch: RunBatch) -> None:
    url, sim = start_sim(rpd=6)
    rows = plain_rows(10)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})

    first = run_batch(job, "--base-url", url)

    assert first.returncode == 3, first.stderr
    assert "per day" in first.stderr and "again" in first.stderr
    assert not (tmp_path / "out.parquet").exists()
    assert sum(e.status == 200 for e in chat_log(sim)) == 6
    assert sum(e.status == 429 for e in chat_log(sim)) <= 8, "it kept hammering a spent daily quota"

    sim.config.rpd = 1000  # the next day, or a higher tier
    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    assert sum(e.status == 200 for e in chat_log(sim)) == 10
    assert answered_twice(sim) == []


def test_daily_quota_spent_by_the_last_row_still_completes(tmp_path: Path, start_sim: StartSim,
                                                           write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(rpd=5)  # exactly the job's size: a user who sized the job to the daily budget
    rows = plain_rows(5)
    write_csv(rows, tmp_path / "in.csv")

    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url)

    assert [e.status for e in chat_log(sim)] == [200] * 5
    assert proc.returncode == 0, proc.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])


# -- 10: --limit and --simulate ----------------------------------------------------------------------------

def test_negative_limit_is_refused(tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob,
                                   run_batch: RunBatch) -> None:
    url, _ = simulator
    write_csv(plain_rows(4), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    before = (tmp_path / "out.parquet").read_bytes()

    proc = run_batch(job, "--base-url", url, "--limit", "-1")

    assert (tmp_path / "out.parquet").read_bytes() == before, "a typo replaced the output with no rows"
    assert proc.returncode == 2, proc.stderr


def test_limit_processes_only_the_first_rows(tmp_path: Path, simulator: tuple[str, Simulator],
                                             write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(40)
    write_csv(rows, tmp_path / "in.csv")
    proc = run_batch(write_job("in.csv", task={"prompt": PROMPT}), "--base-url", url, "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    check_rows(rows[:5], read_output(tmp_path / "out.parquet")[1])
    assert len(chat_log(sim)) == 5


def test_simulate_runs_the_example_job_without_a_key(tmp_path: Path, run_batch: RunBatch) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "jobs" / "resumes.toml", tmp_path / "jobs" / "resumes.toml")
    shutil.copy(REPO / "data" / "resumes.csv", tmp_path / "data" / "resumes.csv")

    proc = run_batch(tmp_path / "jobs" / "resumes.toml", "--simulate", key=None)

    assert proc.returncode == 0, proc.stderr
    names, out = read_output(tmp_path / "data" / "resumes.enriched.parquet")
    assert len(out) == 48
    assert "resume_format" in names
    assert all(o["resume_format"] and o["error"] is None for o in out)


# -- 11, 12: interruption and a second run of the same job ---------------------------------------------------

def _spawn(job: Path, url: str, key: str, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """A run in the background; its stdout and stderr go to NAME.out and NAME.err in tmp_path."""
    with (tmp_path / f"{name}.out").open("wb") as out, (tmp_path / f"{name}.err").open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                                env=cli_env(key), cwd=tmp_path, stdout=out, stderr=err)


def _stderr(tmp_path: Path, name: str) -> str:
    """What the background run NAME has written to stderr so far."""
    return (tmp_path / f"{name}.err").read_text(encoding="utf-8")


def test_sigint_stops_resumably_and_nothing_is_paid_twice(tmp_path: Path, start_sim: StartSim,
                                                          write_job: WriteJob, run_batch: RunBatch,
                                                          api_key: str) -> None:
    url, sim = start_sim(latency_ms=300, fault_rate=0.05, faults=FAULTS)
    rows = plain_rows(150)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"concurrency": 4})

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: sum(e.status == 200 and e.fault is None for e in chat_log(sim)) >= 8, "answers")
        wal = [p for p in tmp_path.iterdir() if p.name.endswith("-wal")]
        assert wal and all(api_key.encode() not in p.read_bytes() for p in wal)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    err = _stderr(tmp_path, "first")

    assert code == 3, err
    # One signal: the requests in flight are finished (and kept), none is cut.
    assert "finishing the requests in flight" in err and "stopped at once" not in err, err
    assert "again" in err and "resume" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()
    before = sum(e.status == 200 and e.fault is None for e in chat_log(sim))
    assert before < 150, "the run finished before the signal; the test proves nothing"

    sim.config.latency_ms = 0
    again = run_batch(job, "--base-url", url)

    assert again.returncode == 0, again.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    assert answered_twice(sim) == [], "a row answered before the signal was sent again"
    assert sum(e.status == 200 and e.fault is None for e in chat_log(sim)) == 150


def test_second_sigint_stops_at_once(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                     run_batch: RunBatch, api_key: str) -> None:
    # A request on the wire takes 10 minutes: only the second signal can end this run within the guard.
    url, sim = start_sim(latency_ms=600_000)
    rows = plain_rows(20)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"concurrency": 4, "request-timeout": 900})

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: sim.in_flight == 4, "four requests on the wire")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "finishing the requests in flight" in _stderr(tmp_path, "first"), "signal one")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    err = _stderr(tmp_path, "first")

    assert code == 3, err
    assert "stopped at once on a second signal" in err, err
    assert "again" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.parquet").exists()

    sim.config.latency_ms = 0
    again = run_batch(job, "--base-url", url)
    assert again.returncode == 0, again.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])


def test_after_a_kill_the_lock_is_free_and_committed_answers_are_kept(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    url, sim = start_sim(latency_ms=200)
    rows = plain_rows(100)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"concurrency": 4})

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: sum(e.status == 200 for e in chat_log(sim)) >= 30, "answers")
        sim.config.latency_ms = FROZEN_MS  # only the requests already on the wire can still be answered
        proc.send_signal(signal.SIGKILL)  # no cleanup at all: only what was committed survives
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    answered = sum(e.status == 200 for e in chat_log(sim))
    assert answered < 100, "the run finished before the kill; the test proves nothing"

    sim.config.latency_ms = 0
    again = run_batch(job, "--base-url", url)

    assert again.returncode == 0, again.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    assert len({e.body_sha256 for e in chat_log(sim) if e.status == 200}) == 100
    # Answers are committed as they arrive: a kill loses only the requests on the wire (concurrency 4).
    assert len(answered_twice(sim)) <= 4


def test_two_kills_in_a_600_row_run_pay_only_what_was_in_flight(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    url, sim = start_sim(latency_ms=60, jitter_ms=60)
    rows = plain_rows(600)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"concurrency": 16})

    for name, after in (("first", 150), ("second", 350)):  # kill -9 twice, well inside the run
        sim.config.latency_ms = 60
        proc = _spawn(job, url, api_key, tmp_path, name)
        try:
            def enough(n: int = after) -> bool:
                return sum(e.status == 200 for e in chat_log(sim)) >= n

            wait_until(enough, "answers")
            sim.config.latency_ms = FROZEN_MS  # only the requests already on the wire can still be answered
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=HANG_GUARD_S)
        finally:
            proc.kill()
    assert sum(e.status == 200 for e in chat_log(sim)) < 600, "a run finished before its kill"
    sim.config.latency_ms = 0

    again = run_batch(job, "--base-url", url)
    assert again.returncode == 0, again.stderr
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])
    assert len({e.body_sha256 for e in chat_log(sim) if e.status == 200}) == 600
    # At most the 16 requests on the wire at each kill are paid twice.
    assert len(answered_twice(sim)) <= 32, len(answered_twice(sim))
    before = len(chat_log(sim))
    assert run_batch(job, "--base-url", url).returncode == 0
    assert len(chat_log(sim)) == before, "a re-run of a finished job sent requests"


def test_second_concurrent_run_is_refused(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                          run_batch: RunBatch, api_key: str) -> None:
    # The first run needs 90 s (60 rows, 2 at a time, 3 s each): a second run that waited for it to
    # finish would outlast the hang guard.
    url, sim = start_sim(latency_ms=3000)
    rows = plain_rows(60)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"concurrency": 2})

    proc = _spawn(job, url, api_key, tmp_path, "first")
    try:
        wait_until(lambda: sim.in_flight == 2, "the first run to send")
        second = run_batch(job, "--base-url", url, timeout=HANG_GUARD_S)
        first_still_running = proc.poll() is None
        sim.config.latency_ms = 0
        code = proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()

    assert second.returncode == 2, second.stderr
    assert "lock" in second.stderr.lower() or "another run" in second.stderr.lower(), second.stderr
    assert first_still_running, "the second run did not refuse while the first held the job"
    assert code == 0, (tmp_path / "first.err").read_text(encoding="utf-8")
    assert answered_twice(sim) == []
    assert len(chat_log(sim)) == 60
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])


# -- 13: exactly what goes on the wire --------------------------------------------------------------------

class Capture(LocalServer):
    """A minimal OpenAI-style server at /v1 (like llama.cpp) that records what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, dict(request.headers), body))
        text = "echo: " + body["messages"][-1]["content"]
        return completion(text, model=body["model"])


def test_request_body_sends_zeros_and_never_top_k(tmp_path: Path, background_loop: BackgroundLoop,
                                                  write_job: WriteJob, run_batch: RunBatch,
                                                  api_key: str) -> None:
    capture = Capture()
    url = background_loop.run(capture.start())
    rows = plain_rows(3)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "system-message": "Sys for ${name}",
                                    "temperature": 0, "seed": 0, "top-k": 10, "top-p": 0.5,
                                    "max-new-tokens": 50, "user": "e2e"})
    try:
        proc = run_batch(job, "--base-url", url)
    finally:
        background_loop.run(capture.runner.cleanup())

    assert proc.returncode == 0, proc.stderr
    assert "top-k" in proc.stderr or "top_k" in proc.stderr, "top-k is dropped silently"
    assert len(capture.requests) == 3
    sent = {body["messages"][-1]["content"]: (path, headers, body)
            for path, headers, body in capture.requests}
    for row in rows:
        path, headers, body = sent[render(row)]
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == f"Bearer {api_key}"
        assert body["model"] == MODEL
        assert "temperature" in body and body["temperature"] == 0
        assert "seed" in body and body["seed"] == 0 and isinstance(body["seed"], int)
        # A server that is not Groq (nor OpenAI) gets the budget under both names (llama.cpp knows only
        # max_tokens); Groq's exact bytes are pinned in test_compat.
        assert body["max_completion_tokens"] == 50 and body["max_tokens"] == 50
        assert body["top_p"] == 0.5 and body["user"] == "e2e"
        assert not any("top_k" in k or "top-k" in k for k in body)
        assert body["messages"] == [{"role": "system", "content": f"Sys for {row['name']}"},
                                    {"role": "user", "content": render(row)}]
    out = read_output(tmp_path / "out.parquet")[1]
    assert [o["text"] for o in out] == ["echo: " + render(r) for r in rows]
    assert [o["input_tokens"] for o in out] == [7, 7, 7]


# -- 14: the key never travels in clear text -----------------------------------------------------------------

@pytest.mark.parametrize("where", ["--base-url", "[api] base-url", "GROQ_BASE_URL"])
def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path, write_job: WriteJob, run_batch: RunBatch,
                                                api_key: str, where: str) -> None:
    write_csv(plain_rows(3), tmp_path / "in.csv")
    args: list[str] = []
    env = None
    if where == "--base-url":
        job, args = write_job("in.csv"), ["--base-url", "http://example.com/v1"]
    elif where == "[api] base-url":
        job = write_job("in.csv", api={"base-url": "http://example.com/v1"})
    else:
        job, env = write_job("in.csv"), cli_env(api_key, GROQ_BASE_URL="http://example.com")

    proc = run_batch(job, *args, env=env)

    assert proc.returncode == 2, proc.stderr
    assert "example.com" in proc.stderr and "https" in proc.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_base_url_precedence(tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob,
                             run_batch: RunBatch, api_key: str) -> None:
    """--base-url beats [api] base-url, which beats GROQ_BASE_URL (each loser here would be refused)."""
    url, sim = simulator
    write_csv(plain_rows(2), tmp_path / "in.csv")
    env = cli_env(api_key, GROQ_BASE_URL="http://example.com")
    cli_wins = write_job("in.csv", api={"base-url": "http://example.com/v1"})
    job_wins = write_job("in.csv", name="job2.toml", api={"base-url": url}, output={"path": "out2.parquet"})

    assert run_batch(cli_wins, "--base-url", url, env=env).returncode == 0
    assert run_batch(job_wins, env=env).returncode == 0
    assert len(chat_log(sim)) == 4  # two jobs, two states: both sent their 2 rows to the simulator


def test_missing_key_for_groq_is_a_job_error(tmp_path: Path, write_job: WriteJob,
                                             run_batch: RunBatch) -> None:
    write_csv(plain_rows(3), tmp_path / "in.csv")
    proc = run_batch(write_job("in.csv"), key=None, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert "GROQ_API_KEY" in proc.stderr


def test_a_corrupt_store_is_a_clear_error_that_sends_nothing(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(plain_rows(5), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    (tmp_path / "out.parquet.state.sqlite").write_bytes(b"this is not a database" * 100)

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 2, proc.stderr
    assert "out.parquet.state.sqlite" in proc.stderr and "Move it aside" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert chat_log(sim) == []


def test_status_counts_answered_failed_and_pending_without_sending(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    url, sim = start_sim()
    rows = plain_rows(20)
    rows[3]["experience"] = None  # an invalid row
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"max-attempts": 1})

    def status() -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "batch", "status", str(job), "--json"],
                              env=cli_env(api_key), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    before = status()
    assert (before["rows"], before["pending"], before["answered"], before["last_run"]) == (20, 20, 0, None)

    assert run_batch(job, "--base-url", url, "--limit", "10").returncode == 1  # row 4 is invalid
    sim.config.fault_rate, sim.config.faults = 1.0, ("503",)
    write_csv(rows + plain_rows(2, start=20), tmp_path / "in.csv")  # 2 more rows; they will fail
    assert run_batch(job, "--base-url", url).returncode == 1
    sent = len(chat_log(sim))

    after = status()
    assert len(chat_log(sim)) == sent, "status sent a request"
    assert after["rows"] == 22 and after["invalid_rows"] == 1
    assert after["answered"] == 9 and after["failed_retryable"] == 12 and after["pending"] == 0
    assert after["state_bytes"] > 0 and after["last_run"]["status"] == "failed-rows"


def test_max_new_tokens_above_the_models_maximum_is_refused_before_sending(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    write_csv(plain_rows(3), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "max-new-tokens": 100_000})
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 2, proc.stderr
    assert "max-new-tokens" in proc.stderr and "65536" in proc.stderr
    assert chat_log(sim) == []


def test_row_errors_name_the_row_by_its_key(
        tmp_path: Path, simulator: tuple[str, Simulator], write_job: WriteJob, run_batch: RunBatch) -> None:
    url, _ = simulator
    rows = plain_rows(3)
    rows[1]["experience"] = None
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", input={"path": "in.csv", "key": "id"}, task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 1
    out = read_output(tmp_path / "out.parquet")[1]
    assert out[1]["error"] == ("input row 2 (id '1'): column 'experience' is empty (null); "
                               "the prompt needs a value there")
