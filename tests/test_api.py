"""The Python door (`batch.run`, `arun`, `plan`): each kind of data in and its kind back, the right answer
on the right row, one validation with the caller's spelling, the per-user cache, and failures as values.

Every run goes to a real simulator on a loopback socket (`base_url=`), so the server's own log says what
was sent; the per-user cache lives under a temporary XDG_CACHE_HOME.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import batch
from batch.sim import Simulator, sim_answer

MODEL = "openai/gpt-oss-20b"
PROMPT = "Summarize: ${body}"
HOSTILE = ['he said "hi",\nthen left', "naïve — 漢字 🎉 \u202eRTL", "${body} {0} $$ 100%", "", "x" * 3000]
StartSim = Callable[..., tuple[str, Simulator]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_python_door_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    return tmp_path / "xdg" / "batch"


def expected(body: str, prompt: str = "Summarize: ") -> str:
    return sim_answer({"model": MODEL, "messages": [{"role": "user", "content": prompt + body}]})


def opts(url: str, **more: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_new_tokens": 1024, "base_url": url, "progress": False,
            "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000,
            **more}


def chats(sim: Simulator) -> int:
    return sum(1 for e in sim.log if e.status == 200)


def test_pandas_in_pandas_out_every_answer_on_its_row(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    df = pd.DataFrame({"id": [7, 3, 9, 1, 5, 2], "body": [*HOSTILE, None]}, index=list("abcdef"))

    out = batch.run(df, **opts(url))

    assert isinstance(out, pd.DataFrame) and list(out.index) == list("abcdef")
    assert list(out.columns[:2]) == ["id", "body"] and "text" in out.columns and "error" in out.columns
    pd.testing.assert_frame_equal(out[["id", "body"]], df)
    for body, text, error in zip(df["body"][:5], out["text"][:5], out["error"][:5], strict=True):
        assert text == expected(body) and pd.isna(error)
    last = out.iloc[-1].to_dict()
    assert pd.isna(last["text"]) and "'body' is empty" in str(last["error"])
    assert out["input_tokens"].dtype == "Int64" and int(out["input_tokens"].iloc[0]) > 0
    summary = out.attrs["batch"]
    assert (summary["rows"], summary["rows_ok"], summary["rows_failed"]) == (6, 5, 1)
    assert chats(sim) == 5


def test_calling_again_pays_nothing_twice(simulator: tuple[str, Simulator], cache: Path) -> None:
    url, sim = simulator
    df = pd.DataFrame({"body": ["one", "two", "three"]})
    first = batch.run(df, **opts(url))
    again = batch.run(df, **opts(url))
    more = batch.run(pd.DataFrame({"body": ["one", "two", "three", "four"]}), **opts(url))

    assert chats(sim) == 4, "a re-call sent again, or the new row was not sent"
    assert again.attrs["batch"]["rows_from_store"] == 3
    assert list(again["text"]) == list(first["text"]) and more["text"][3] == expected("four")
    assert len(list(cache.glob("*.sqlite"))) == 1, "one store per task"


def test_arrow_table_record_batch_reader_polars_and_duckdb(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    bodies = [f"row {i}: {HOSTILE[i % len(HOSTILE)]}" for i in range(50)]
    table = pa.table({"n": list(range(50)), "body": bodies})
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7))
    con = duckdb.connect()
    con.register("t", table)
    for data in (table, reader, con.sql("SELECT n, body FROM t ORDER BY n")):
        out = batch.run(data, **opts(url))
        assert isinstance(out, pa.Table), type(data)
        assert out.column_names[:2] == ["n", "body"] and out.num_rows == 50
        assert out.column("n").to_pylist() == list(range(50))
        assert out.column("text").to_pylist() == [expected(b) for b in bodies]
        summary = json.loads((out.schema.metadata or {})[b"batch"])
        assert summary["rows_ok"] == 50


@pytest.mark.parametrize("lazy", [False, True], ids=["DataFrame", "LazyFrame"])
def test_polars_in_polars_out(simulator: tuple[str, Simulator], lazy: bool) -> None:
    """A polars DataFrame or LazyFrame comes back a polars DataFrame: the caller's columns and dtypes
    (a Categorical stays one), every row in order, nulls kept, and the summary in `out.attrs`."""
    url, sim = simulator
    bodies: list[str | None] = [f"row {i}: {HOSTILE[i % len(HOSTILE)]}" for i in range(40)]
    bodies[7] = None  # a null in the prompt's column fails its row, as a value
    tags = pl.Series([("a", "b", "c")[i % 3] for i in range(40)], dtype=pl.Categorical)
    frame = pl.DataFrame({"n": list(range(40)), "body": bodies, "tag": tags})
    data = frame.lazy().filter(pl.col("n") < 30) if lazy else frame
    before = chats(sim)
    out = batch.run(data, **opts(url))
    rows = 30 if lazy else 40
    assert isinstance(out, pl.DataFrame)
    assert out.columns[:3] == ["n", "body", "tag"] and out.height == rows
    assert out.schema["tag"] == pl.Categorical and out["tag"].to_list() == frame["tag"].to_list()[:rows]
    assert out["n"].to_list() == list(range(rows)) and out["body"].to_list() == bodies[:rows]
    assert out["text"].to_list() == [None if b is None else expected(b) for b in bodies[:rows]]
    assert out["error"][7] is not None and out["error"].null_count() == rows - 1
    summary: dict[str, Any] = getattr(out, "attrs")["batch"]  # noqa: B009 (polars declares no attrs)
    assert summary["rows_ok"] == rows - 1 and chats(sim) - before == rows - 1


def test_a_polars_query_that_fails_is_a_job_error_and_sends_nothing(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    lazy = pl.DataFrame({"body": ["a"]}).lazy().select(pl.col("missing"))
    with pytest.raises(batch.JobError, match="polars LazyFrame"):
        batch.run(lazy, **opts(url))
    assert chats(sim) == 0


def test_a_path_in_pandas_out(tmp_path: Path, simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": b}) + "\n" for b in HOSTILE), encoding="utf-8")
    out = batch.run(str(path), **opts(url))
    assert isinstance(out, pd.DataFrame) and list(out["text"]) == [expected(b) for b in HOSTILE]


def test_a_job_file_with_options_over_it(tmp_path: Path, simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    job = tmp_path / "job.toml"
    job.write_text(f'[input]\npath = "unused.csv"\n[task]\nmodel = "{MODEL}"\nprompt = "Job: ${{body}}"\n'
                   'temperature = 0.7\n[output]\ntext-column = "answer"\n', encoding="utf-8")
    out = batch.run(pd.DataFrame({"body": ["a"]}), job, temperature=0, base_url=url, progress=False)
    assert out["answer"][0] == expected("a", "Job: ")
    assert chats(sim) == 1
    # The option won over the job file: the same call with the file's temperature is another request.
    batch.run(pd.DataFrame({"body": ["a"]}), job, base_url=url, progress=False)
    assert chats(sim) == 2


def test_invalid_options_every_problem_in_the_callers_words(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    with pytest.raises(ValueError) as info:
        batch.run(pd.DataFrame({"body": ["a"]}), model=MODEL, prompt=PROMPT, max_new_tokens=0,
                  temprature=1, concurrency="8", base_url=url)
    assert isinstance(info.value, batch.JobError)
    text = str(info.value)
    assert "max_new_tokens=" in text and "temprature=" in text and "did you mean temperature=" in text
    assert "concurrency=" in text and "[task]" not in text
    with pytest.raises(batch.JobError, match="'bodyy'"):
        batch.run(pd.DataFrame({"body": ["a"]}), **opts(url, prompt="S: ${bodyy}"))
    with pytest.raises(batch.JobError, match="DataFrame, a pyarrow Table"):
        batch.run({"body": ["a"]}, **opts(url))
    assert sim.log == [], "a request was sent for a job that cannot succeed"


def test_the_sync_call_works_inside_a_running_loop(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator

    async def notebook_cell() -> pd.DataFrame:
        return batch.run(pd.DataFrame({"body": ["in a loop"]}), **opts(url))  # type: ignore[no-any-return]

    out = asyncio.run(notebook_cell())
    assert out["text"][0] == expected("in a loop")


def test_arun(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    out = asyncio.run(batch.arun(pa.table({"body": ["x", "y"]}), **opts(url)))
    assert out.column("text").to_pylist() == [expected("x"), expected("y")]


def test_plan_sends_nothing_and_counts_what_the_cache_holds(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    df = pd.DataFrame({"body": ["a", "b", "a", None]})
    before = batch.plan(df, **{k: v for k, v in opts(url).items() if k != "progress"})
    assert (before.rows, before.requests, before.invalid_rows, before.answered) == (4, 2, 1, 0)
    assert before.cost_usd is not None and before.cost_usd > 0 and sim.log == []
    batch.run(df, **opts(url))
    after = batch.plan(df, **{k: v for k, v in opts(url).items() if k != "progress"})
    assert after.answered == 2


def test_batch_api_mode(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    bodies = [f"b{i}" for i in range(30)]
    out = batch.run(pd.DataFrame({"body": bodies}), **opts(url, mode="batch", poll_interval=0.2))
    assert list(out["text"]) == [expected(b) for b in bodies]
    assert (sim.uploads, sim.batches_created) == (1, 1) and sim.log == [], "sent online"
    assert out.attrs["batch"]["mode"] == "batch"


def test_a_refused_key_is_an_exception_and_rows_fail_as_values(start_sim: StartSim,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = start_sim(api_key="gsk_the_right_key_0123456789")
    monkeypatch.setenv("GROQ_API_KEY", "gsk_a_wrong_key_000000000000")
    with pytest.raises(batch.FatalApiError) as info:
        batch.run(pd.DataFrame({"body": ["a"]}), **opts(url))
    assert "gsk_a_wrong_key" not in str(info.value)


SCRIPT = """
import json, sys
import pandas as pd
import batch
n, url = int(sys.argv[1]), sys.argv[2]
MODEL, PROMPT = sys.argv[3], sys.argv[4]
df = pd.DataFrame({"body": [f"row {i}" for i in range(n)]})
out = batch.run(df, model=MODEL, prompt=PROMPT, max_new_tokens=1024, base_url=url, concurrency=4,
                requests_per_minute=600000, tokens_per_minute=100000000, progress=False)
print(json.dumps({"texts": list(out["text"]), "summary": out.attrs["batch"]}))
"""


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "call.py"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_two_processes_share_the_default_cache_at_once(tmp_path: Path, start_sim: StartSim) -> None:
    import subprocess
    import sys

    url, sim = start_sim(latency_ms=20)
    script = _script(tmp_path)
    procs = [subprocess.Popen([sys.executable, str(script), "60", url, MODEL, PROMPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["texts"] == [expected(f"row {i}") for i in range(60)]
    assert chats(sim) <= 120


def test_ctrl_c_keeps_every_answer_and_the_next_call_resumes(tmp_path: Path, start_sim: StartSim) -> None:
    import signal
    import subprocess
    import sys
    import time

    url, sim = start_sim(latency_ms=100)
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path)), "300", url, MODEL, PROMPT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60  # a hang guard only: the condition is what is waited for
    while chats(sim) < 40 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    answered = chats(sim)
    assert 40 <= answered < 300

    out = batch.run(pd.DataFrame({"body": [f"row {i}" for i in range(300)]}), **opts(url, concurrency=4))

    assert list(out["text"]) == [expected(f"row {i}") for i in range(300)]
    # Only the requests on the wire at the interrupt (at most one per worker) are paid twice.
    assert chats(sim) <= 300 + 4
    assert out.attrs["batch"]["rows_from_store"] >= answered - 4


def test_stopped_carries_the_rows_so_far_then_the_next_call_collects(
        simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    df = pd.DataFrame({"body": ["p", "q", "r"]})
    with pytest.raises(batch.Stopped) as info:
        batch.run(df, **opts(url, mode="batch", wait=False))
    partial = info.value.partial
    assert isinstance(partial, pd.DataFrame) and list(partial["body"]) == ["p", "q", "r"]
    assert partial["text"].isna().all() and partial["error"].notna().all()
    assert "still running" in info.value.reason

    out = batch.run(df, **opts(url, mode="batch", poll_interval=0.2))  # attaches; submits nothing new
    assert list(out["text"]) == [expected(b) for b in "pqr"]
    assert (sim.uploads, sim.batches_created) == (1, 1)


NOTEBOOK = """
import asyncio, glob, os, signal, sqlite3, sys, threading, time
import pandas as pd
import batch
url, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
df = pd.DataFrame({"body": [f"cell {i}" for i in range(300)]})

def answered():
    for path in glob.glob(os.path.join(os.environ["XDG_CACHE_HOME"], "batch", "*.sqlite")):
        try:
            with sqlite3.connect(path) as db:
                return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.Error:
            pass
    return 0

def stop_button():  # pressed once answers are in; the deadline only guards a hang
    deadline = time.monotonic() + 60
    while answered() < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what a kernel's stop sends

async def cell():
    batch.run(df, model=model, prompt=prompt, max_new_tokens=1024, base_url=url, concurrency=4,
              requests_per_minute=600000, tokens_per_minute=100000000, progress=False)

threading.Thread(target=stop_button, daemon=True).start()
try:
    asyncio.new_event_loop().run_until_complete(cell())  # a kernel's loop, as IPython runs one
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_notebook_stop_cancels_the_run_and_keeps_its_answers(tmp_path: Path, start_sim: StartSim) -> None:
    import subprocess
    import sys

    url, sim = start_sim(latency_ms=50)
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), url, MODEL, PROMPT], capture_output=True, text=True,
                          env=_env(), timeout=120, check=False)
    assert proc.stdout.strip() == "interrupted", proc.stderr
    answered = chats(sim)
    assert 30 <= answered < 300, "the run went on after the stop"

    out = batch.run(pd.DataFrame({"body": [f"cell {i}" for i in range(300)]}), **opts(url, concurrency=4))
    assert list(out["text"]) == [expected(f"cell {i}") for i in range(300)]
    assert chats(sim) <= 300 + 4 and out.attrs["batch"]["rows_from_store"] >= answered - 4
