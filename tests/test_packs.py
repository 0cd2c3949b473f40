"""More rows per request, end to end: `python -m batch run` with `[task] rows-per-request`, against the
Groq simulator on a real socket, as a user runs it.

The simulator answers a pack item by item, each item's answer exactly what the row would get alone
(`[model] <its prompt>`), and can lose, repeat or rename items (`pack_fault_rate`, `pack_faults`). So
every test can hold each row's answer to its own prompt: a row that took another row's item shows.
What the simulator served is watched from inside it (`Served`: each answered request's pack items,
finish reason and the usage it counted), so the tests count what the server saw and billed, not what
the client says it sent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import HANG_GUARD_S, MODEL, cli_env, wait_until
from nasty import nasty_rows, write_csv, write_jsonl

import batch.sim.server as sim_server
from batch.sim import Simulator, count_tokens, read_pack
from batch.sim.answers import answer, usage_block

StartSim = Callable[..., tuple[str, Simulator]]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
Rows = list[dict[str, Any]]

PROMPT = "Candidate ${name} ($$5, {0} {braces}):\n${experience}"
FROZEN_MS = 600_000  # a latency that answers nothing new within a test: the server is frozen


def render(row: dict[str, Any]) -> str:
    """PROMPT rendered by hand."""
    return f"Candidate {row['name']} ($5, {{0}} {{braces}}):\n{row['experience']}"


def echo(prompt: str) -> str:
    """What the simulator answers a row of a text job, alone or inside a pack."""
    return f"[{MODEL}] {prompt}"


def plain_rows(n: int, start: int = 0) -> Rows:
    return [{"id": str(i), "name": f"Person {i}", "experience": f"experience number {i}"}
            for i in range(start, start + n)]


# -- what the simulator served --------------------------------------------------------------------------

@dataclass
class Served:
    """One request the simulator answered (a 200): its pack's items (None: a single request), the
    damage done to them, its finish reason, and the usage it counted."""

    items: tuple[tuple[str, str], ...] | None
    damage: tuple[str | None, ...]
    finish: str
    body: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def prompts(self) -> list[str]:
        return [p for _, p in self.items or ()]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Served]:
    """Every request the in-process simulators answer, in the order they answered them."""
    seen: list[Served] = []

    def answering(body: dict[str, Any], cap: int | None,
                  damage: Sequence[str | None] = ()) -> tuple[str, int, str]:
        text, completion, finish = answer(body, cap, damage)
        pack = read_pack(body)
        seen.append(Served(None if pack is None else pack.items, tuple(damage), finish, body))
        return text, completion, finish

    def counting(model: str, prompt: int, completion: int, queue_time: float,
                 elapsed: float) -> dict[str, Any]:
        # Called right after `answer`, with no await between: the usage of the request just recorded.
        seen[-1].prompt_tokens, seen[-1].completion_tokens = prompt, completion
        return usage_block(model, prompt, completion, queue_time, elapsed)

    monkeypatch.setattr(sim_server, "answer", answering)
    monkeypatch.setattr(sim_server, "usage_block", counting)
    return seen


def read_out(path: Path) -> Rows:
    rows: Rows = pq.read_table(path).to_pylist()
    return rows


def report_of(tmp_path: Path, output: str = "out.parquet") -> dict[str, Any]:
    report: dict[str, Any] = json.loads((tmp_path / f"{output}.report.json").read_text(encoding="utf-8"))
    return report


def packed_job(write_job: WriteJob, rows_per_request: int = 10, *, name: str = "job.toml",
               task: dict[str, Any] | None = None, **tables: dict[str, Any]) -> Path:
    return write_job("in.csv", name=name, task={"prompt": PROMPT, "rows-per-request": rows_per_request,
                                                **(task or {})}, **tables)


def check_own_answers(rows: Sequence[dict[str, Any]], out: Sequence[dict[str, Any]]) -> None:
    """Every row, in order, with the answer computed from its own prompt, or failed for its null."""
    assert len(out) == len(rows)
    for i, (src, got) in enumerate(zip(rows, out, strict=True)):
        where = f"row {i} ({src['id']!r})"
        assert got["id"] == src["id"] and got["experience"] == src["experience"], f"{where}: input changed"
        if src["experience"] is None:
            assert got["text"] is None and got["error"], where
            assert "experience" in got["error"] and "null" in got["error"], f"{where}: {got['error']!r}"
            continue
        assert got["error"] is None, f"{where}: {got['error']}"
        assert got["text"] == echo(render(src)), f"{where}: another row's answer, or altered"
        assert got["total_tokens"] == got["input_tokens"] + got["output_tokens"], where
        assert got["finish_reason"] == "stop" and got["model"] == MODEL and got["request_id"], where


# -- 1: alignment against a server that loses, repeats and renames items --------------------------------

def test_every_row_gets_its_own_item_through_lost_repeated_and_renamed_items(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = plain_rows(200)
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim(pack_fault_rate=0.3, pack_faults=("lose", "repeat", "rename"), seed=7)

    job = packed_job(write_job, 10)

    proc = run_batch(job, "--base-url", url)

    # Down to one row a pack, a row is asked alone until its max-attempts are spent; one whose item is
    # still lost or repeated then fails, as documented: never with another row's answer.
    assert proc.returncode in (0, 1), proc.stderr
    out = read_out(tmp_path / "out.parquet")
    failed = [o for o in out if o["error"] is not None]
    assert len(failed) < 10, [o["error"] for o in failed]
    for o in failed:
        assert o["text"] is None and o["rows_in_request"] == 1 and o["attempts"] >= 2, o
        assert "with this row's id" in o["error"], o["error"]
    check_own_answers([r for r, o in zip(rows, out, strict=True) if o["error"] is None],
                      [o for o in out if o["error"] is None])
    kinds = Counter(k for s in served for k in s.damage if k is not None)
    assert set(kinds) == {"lose", "repeat", "rename"}, kinds
    # The sizes the rows say they shared a request with are sizes the server answered, some smaller
    # than 10: the rows their first pack did not answer went again in smaller packs.
    sizes = Counter(len(s.items or ()) for s in served)
    used = Counter(o["rows_in_request"] for o in out)
    assert set(used) <= set(sizes) and 10 in used and min(used) < 10, (used, sizes)
    assert all(used[k] <= k * sizes[k] for k in used), (used, sizes)
    report = report_of(tmp_path)
    assert report["rows_resent"] > 0
    assert report["pack_sizes"] == {str(k): v for k, v in sizes.items()}
    assert report["rows_ok"] == 200 - len(failed) and report["rows_failed"] == len(failed)
    # Packs divide the requests: 20 full packs, then the re-sends.
    assert len(sim.log) == len(served) == report["requests_sent"] < 100

    # --retry-failed sends only the failed rows again (in packs), until every row has its own answer.
    for _ in range(6):
        if proc.returncode == 0:
            break
        sent = len(served)
        proc = run_batch(job, "--base-url", url, "--retry-failed")
        assert proc.returncode in (0, 1), proc.stderr
        assert sum(len(s.items or ()) for s in served[sent:]) >= len(failed)
        assert {p for s in served[sent:] for p in s.prompts} == \
            {render(r) for r, o in zip(rows, out, strict=True) if o["error"] is not None}
        out = read_out(tmp_path / "out.parquet")
        failed = [o for o in out if o["error"] is not None]
    assert proc.returncode == 0, proc.stderr
    check_own_answers(rows, out)
    assert len(sim.log) < 100


# -- 2: hostile text inside packs ----------------------------------------------------------------------

def test_hostile_row_text_inside_packs_reaches_its_own_row(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = nasty_rows(150, seed=2)
    rows.append({"id": "150", "name": "", "experience": ""})  # the empty string is a value, not a null
    write_jsonl(rows, tmp_path / "in.jsonl")  # JSON keeps the empty string apart from a null
    nulls = [r for r in rows if r["experience"] is None]
    long = [r for r in rows if r["experience"] and len(r["experience"].encode()) >= 10_000]
    assert nulls and long
    url, _ = start_sim()

    proc = run_batch(packed_job(write_job, 8, input={"path": "in.jsonl"}), "--base-url", url)

    assert proc.returncode == 1, proc.stderr  # the null rows fail; nothing else does
    out = read_out(tmp_path / "out.parquet")
    check_own_answers(rows, out)
    assert out[-1]["text"] == echo(render(rows[-1]))
    # Each distinct prompt went once, inside a pack; a null row went nowhere.
    sent = [p for s in served for p in s.prompts]
    assert all(s.items for s in served)
    wanted = {render(r) for r in rows if r["experience"] is not None}
    assert sorted(sent) == sorted(wanted)
    assert max(o["rows_in_request"] or 0 for o in out) == 8
    assert all(o["rows_in_request"] is None for o, r in zip(out, rows, strict=True)
               if r["experience"] is None)


# -- 3: usage adds up to what the server counted -------------------------------------------------------

def test_usage_columns_add_up_to_what_the_server_counted(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = plain_rows(90)
    rows[5]["experience"] = "a much longer experience " * 40  # rows of very different sizes
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim(pack_fault_rate=0.2, seed=3)  # re-sent rows carry what their packs cost

    proc = run_batch(packed_job(write_job, 10), "--base-url", url)

    assert proc.returncode in (0, 1), proc.stderr  # a row alone may lose its item for good
    out = read_out(tmp_path / "out.parquet")
    assert len(served) == len(sim.log) and all(e.status == 200 for e in sim.log)
    server_in = sum(s.prompt_tokens for s in served)
    server_out = sum(s.completion_tokens for s in served)
    assert server_in + server_out == sum(e.tokens for e in sim.log)
    assert sum(o["input_tokens"] for o in out) == server_in
    assert sum(o["output_tokens"] for o in out) == server_out
    assert sum(o["total_tokens"] for o in out) == server_in + server_out
    assert all(o["total_tokens"] == o["input_tokens"] + o["output_tokens"] for o in out)
    # The simulator reports no cached tokens; nothing may be made up.
    assert all(o["cached_tokens"] in (None, 0) for o in out)
    report = report_of(tmp_path)
    assert (report["input_tokens"], report["output_tokens"], report["cached_tokens"]) == \
        (server_in, server_out, 0)
    assert report["rows_resent"] > 0
    # The shared part is paid in equal shares: the long row pays about its extra text on top of what
    # a row of its first pack answered at once paid (not a share of the shared part that grows with it).
    once = [o["input_tokens"] for o in out[:10] if o["attempts"] == 1 and o is not out[5]]
    extra = count_tokens(render(rows[5])) - count_tokens(render(rows[0]))
    assert once and out[5]["input_tokens"] - max(once) > extra / 2, (out[5]["input_tokens"], once, extra)


# -- 4: a re-run sends nothing, whatever the pack size; one row a request is another question ---------

def test_rerun_and_other_pack_sizes_send_nothing_but_one_row_alone_does(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = plain_rows(50)
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim()

    assert run_batch(packed_job(write_job, 10), "--base-url", url).returncode == 0
    first = len(sim.log)
    assert first == 5

    again = run_batch(packed_job(write_job, 10), "--base-url", url)
    assert again.returncode == 0, again.stderr
    assert len(sim.log) == first, "a re-run sent requests"
    assert report_of(tmp_path)["rows_from_store"] == 50

    seven = run_batch(packed_job(write_job, 7), "--base-url", url)
    assert seven.returncode == 0, seven.stderr
    assert len(sim.log) == first, "another pack size made the stored answers stale"
    check_own_answers(rows, read_out(tmp_path / "out.parquet"))
    assert {o["rows_in_request"] for o in read_out(tmp_path / "out.parquet")} == {10}

    # Documented: a row asked alone is a different question from the same row asked in a pack.
    alone = run_batch(packed_job(write_job, 1), "--base-url", url)
    assert alone.returncode == 0, alone.stderr
    assert len(sim.log) == first + 50
    assert all(s.items is None for s in served[first:])
    out = read_out(tmp_path / "out.parquet")
    check_own_answers(rows, out)
    assert {o["rows_in_request"] for o in out} == {1}


# -- 5: a json_schema job packed -----------------------------------------------------------------------

SCHEMA_TOML = ('{ type = "json_schema", name = "verdict", schema = { type = "object", '
               'properties = { label = { type = "string" }, score = { type = "integer" } }, '
               'required = ["label", "score"], additionalProperties = false } }')


def test_a_json_schema_job_packed_fills_its_typed_columns_row_by_row(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = plain_rows(35)
    rows[3]["experience"] = 'quotes " and \\ and\r\nnew lines, \u05e9\u05dc\u05d5\u05dd \U0001f600'
    write_csv(rows, tmp_path / "in.csv")
    url, _ = start_sim(pack_fault_rate=0.1, seed=5)
    job = packed_job(write_job, 10, task={"prompt": "${experience}"})
    job.write_text(job.read_text(encoding="utf-8").replace(
        "[task]\n", f"[task]\nresponse-format = {SCHEMA_TOML}\n"), encoding="utf-8")

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode in (0, 1), proc.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("score").type == pa.int64()
    out = table.to_pylist()
    ok = [(r, o) for r, o in zip(rows, out, strict=True) if o["error"] is None]
    assert len(ok) >= 30, [o["error"] for o in out if o["error"]]
    # A row fails only alone, when even its own one-item pack came back without its item.
    assert all("with this row's id" in o["error"] and o["rows_in_request"] == 1 and o["label"] is None
               for o in out if o["error"] is not None)
    for src, got in ok:
        assert got["label"] == src["experience"], src["id"]
        assert got["score"] == len(src["experience"]), src["id"]
        assert json.loads(got["text"]) == {"label": src["experience"], "score": len(src["experience"])}
    # The job's schema went nested in the pack's, and every request was a pack.
    assert served and all(s.items for s in served)
    item = served[0].body["response_format"]["json_schema"]["schema"]["properties"]["answers"]["items"]
    assert item["properties"]["answer"]["properties"] == {"label": {"type": "string"},
                                                          "score": {"type": "integer"}}


# -- 6: a pack cut by `length`; a budget too small for the pack refused before sending ----------------

def test_a_pack_cut_short_is_sent_again_in_smaller_packs(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = [{"id": str(i), "name": "n", "experience": f"{i:03d} " + "x" * 100} for i in range(24)]
    rows[9]["experience"] = "long " * 200  # its answer alone is longer than the whole budget
    write_csv(rows, tmp_path / "in.csv")

    def answer_tokens(n: int) -> int:  # a pack of n of the short rows, whole, as the simulator counts it
        items = [{"id": str(i + 1), "answer": echo(render(rows[i]))} for i in range(n)]
        return count_tokens(json.dumps({"answers": items}, ensure_ascii=False))

    budget = answer_tokens(2) + 4
    assert budget < answer_tokens(4) and budget >= 16 * 4 and count_tokens(echo(render(rows[9]))) > budget
    url, sim = start_sim()

    proc = run_batch(packed_job(write_job, 4, task={"max-new-tokens": budget}), "--base-url", url)

    assert proc.returncode == 1, proc.stderr
    out = read_out(tmp_path / "out.parquet")
    # Every pack of 4 was cut; its rows went again two by two, and were answered whole. The long row
    # was cut even alone: it fails, saying so, and keeps no part of the cut answer.
    long = out[9]
    assert long["text"] is None and long["finish_reason"] == "length" and long["rows_in_request"] == 1
    assert "cut short" in long["error"] and "max-new-tokens" in long["error"], long["error"]
    assert long["attempts"] == 3
    check_own_answers(rows[:9] + rows[10:], out[:9] + out[10:])
    assert [o["rows_in_request"] for o in out[:9] + out[10:]] == [2] * 8 + [1] + [2] * 14  # row 8: alone
    assert sorted(len(s.items or ()) for s in served if s.finish == "length") == [1, 2] + [4] * 6
    assert sorted(len(s.items or ()) for s in served if s.finish == "stop") == [1] + [2] * 11
    assert report_of(tmp_path)["rows_resent"] == 24 + 2
    # What a cut pack cost stays with its rows: the columns still add up to the server's count.
    assert sum(o["output_tokens"] for o in out) == sum(s.completion_tokens for s in served)
    assert sum(o["input_tokens"] for o in out) == sum(s.prompt_tokens for s in served)
    assert len(sim.log) == 20


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_budget_too_small_for_the_pack_is_refused_before_sending(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, api_key: str, command: str) -> None:
    write_csv(plain_rows(20), tmp_path / "in.csv")
    url, sim = start_sim()
    job = packed_job(write_job, 10, task={"max-new-tokens": 159}, api={"base-url": url})

    proc = subprocess.run([sys.executable, "-m", "batch", command, str(job)], env=cli_env(api_key),
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8",
                          timeout=HANG_GUARD_S)

    assert proc.returncode == 2, proc.stderr
    assert "rows-per-request" in proc.stderr and "max-new-tokens" in proc.stderr and "160" in proc.stderr
    assert sim.log == []
    assert not (tmp_path / "out.parquet").exists()

    # 16 a row is enough to be let through.
    ok = packed_job(write_job, 10, task={"max-new-tokens": 160}, api={"base-url": url})
    proc = subprocess.run([sys.executable, "-m", "batch", command, str(ok)], env=cli_env(api_key),
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8",
                          timeout=HANG_GUARD_S)
    assert proc.returncode != 2, proc.stderr


# -- 7: kill -9 in the middle of packs, then resume ---------------------------------------------------

def test_a_kill_in_the_middle_of_packs_pays_again_only_what_was_in_flight(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch, api_key: str,
        served: list[Served]) -> None:
    rows = plain_rows(200)
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim(latency_ms=150)
    concurrency, size = 4, 5
    job = packed_job(write_job, size, limits={"concurrency": concurrency})

    with (tmp_path / "first.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "batch", "run", str(job), "--base-url", url],
                                env=cli_env(api_key), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: len(served) >= 16, "the first packs answered")
        sim.config.latency_ms = FROZEN_MS  # only the packs already on the wire can still be answered
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    wait_until(lambda: sim.in_flight == 0, "the simulator to see the killed run's requests gone")
    first = list(served)
    assert len(first) < 200 // size, "the run finished before the kill; the test proves nothing"

    sim.config.latency_ms = 0
    again = run_batch(job, "--base-url", url)

    assert again.returncode == 0, again.stderr
    check_own_answers(rows, read_out(tmp_path / "out.parquet"))
    paid = Counter(p for s in served for p in s.prompts)
    assert set(paid) == {render(r) for r in rows}, "a row was lost"
    assert all(n <= 2 for n in paid.values())
    twice = {p for p, n in paid.items() if n > 1}
    # Answers are committed as they arrive: only the last packs answered before the kill (one a worker,
    # and one more a worker for a commit still being written) can have been paid for and not stored;
    # every pack answered before them was kept.
    recent = {p for s in first[-2 * concurrency:] for p in s.prompts}
    where = sorted({i - len(first) for i, s in enumerate(first) for p in s.prompts if p in twice})
    assert twice <= recent, (len(twice), len(first), where)


# -- 8: rows with images or a chat history go alone; the other rows of the job pack -------------------

HISTORY = [{"role": "user", "content": "My name is Ana."}, {"role": "assistant", "content": "Hello Ana!"}]


def test_rows_with_images_or_history_go_alone_while_text_rows_pack(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    n = 30
    special = {4: "hist", 11: "imgs", 12: "both", 25: "hist"}
    hist = [HISTORY if special.get(i) in ("hist", "both") else None for i in range(n)]
    imgs = [["https://example.test/a.png"] if special.get(i) in ("imgs", "both") else None for i in range(n)]
    questions = [f"question {i}: what now?" for i in range(n)]
    pq.write_table(pa.table({"q": questions, "hist": pa.array(hist, pa.list_(message)),
                             "imgs": pa.array(imgs, pa.list_(pa.string()))}), tmp_path / "in.parquet")
    url, _ = start_sim()
    job = write_job("in.parquet", task={"prompt": "${q}", "system-message": "Be brief.",
                                        "chat-history": "hist", "prompt-images": "imgs",
                                        "rows-per-request": 10})

    proc = run_batch(job, "--base-url", url)

    assert proc.returncode == 0, proc.stderr
    out = read_out(tmp_path / "out.parquet")
    plain = [i for i in range(n) if i not in special]
    for i, o in enumerate(out):
        assert o["error"] is None, o["error"]
        if i in special:
            assert o["rows_in_request"] == 1, i
            marker = "<image:26 chars>" if special[i] in ("imgs", "both") else ""
            assert o["text"] == echo(marker + questions[i]), i
        else:
            assert o["text"] == echo(questions[i]), i
            assert o["rows_in_request"] == (10 if plain.index(i) < 20 else 6), i
    packs = [s for s in served if s.items]
    lone = [s for s in served if s.items is None]
    assert sorted(p for s in packs for p in s.prompts) == sorted(questions[i] for i in plain)
    assert [len(s.items or ()) for s in packs] == [10, 10, 6]
    assert len(lone) == len(special)
    assert sum(len(s.body["messages"]) == 3 for s in lone) == 3  # the rows with a history: no system


# -- 9: incremental runs and --retry-failed, per row ---------------------------------------------------

def test_new_rows_and_failed_rows_are_sent_again_in_packs_and_nothing_else(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch,
        served: list[Served]) -> None:
    rows = plain_rows(40)
    write_csv(rows, tmp_path / "in.csv")
    url, sim = start_sim()
    job = packed_job(write_job, 10)
    assert run_batch(job, "--base-url", url).returncode == 0
    assert len(sim.log) == 4

    # 20 rows more: only they go, in packs.
    rows += plain_rows(20, start=40)
    write_csv(rows, tmp_path / "in.csv")
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == 6
    assert sorted(p for s in served[4:] for p in s.prompts) == sorted(render(r) for r in rows[40:])
    check_own_answers(rows, read_out(tmp_path / "out.parquet"))

    # A server that loses every item: the 10 new rows go down to one a pack and fail there.
    rows += plain_rows(10, start=60)
    write_csv(rows, tmp_path / "in.csv")
    sim.config.pack_fault_rate, sim.config.pack_faults = 1.0, ("lose",)
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 1, proc.stderr
    out = read_out(tmp_path / "out.parquet")
    assert [o["error"] is None for o in out] == [True] * 60 + [False] * 10
    assert all("no item with this row's id" in o["error"] for o in out[60:])
    assert {len(s.items or ()) for s in served[6:]} == {10, 5, 2, 1}
    # 10, then 5, then 2, 2 and 1, then alone until the job's max-attempts (6) are spent.
    assert sorted(o["attempts"] for o in out[60:]) == [6] * 10
    sent = len(sim.log)

    # Without --retry-failed a re-run sends nothing; with it, only the failed rows go, in one pack.
    sim.config.pack_fault_rate = 0.0
    assert run_batch(job, "--base-url", url).returncode == 1
    assert len(sim.log) == sent
    proc = run_batch(job, "--base-url", url, "--retry-failed")
    assert proc.returncode == 0, proc.stderr
    assert len(sim.log) == sent + 1
    assert sorted(served[-1].prompts) == sorted(render(r) for r in rows[60:])
    check_own_answers(rows, read_out(tmp_path / "out.parquet"))

