"""Calls sharing the per-user cache at once pay each request once: a request one call is sending is
claimed (`batch.store.claims`), and the others wait for its answer and count it as from the store.

Two `arun` calls in one loop, two threads calling `run`, two processes, and a claimant killed with
SIGKILL while another call waits on it. Every call goes to a real simulator on a loopback socket with
some latency, so the calls overlap; the simulator's log says which requests were sent, and how often.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import wait_until

import batch
from batch.records import Answer
from batch.sim import Simulator, sim_answer
from batch.store.answers import Store
from batch.store.claims import Claims, alive

MODEL = "openai/gpt-oss-20b"
PROMPT = "Summarize: ${body}"
StartSim = Callable[..., tuple[str, Simulator]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_cache_claims_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    return tmp_path / "xdg" / "batch"


def opts(url: str, **more: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_new_tokens": 1024, "base_url": url, "progress": False,
            "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000, "concurrency": 4, **more}


def bodies(own: str, n_own: int = 50, shared: int = 100) -> list[str]:
    """A frame's rows: `n_own` of its own, then `shared` every frame of the test has."""
    return [f"{own} {i}" for i in range(n_own)] + [f"shared {i}" for i in range(shared)]


def expected(body: str) -> str:
    return sim_answer({"model": MODEL, "messages": [{"role": "user", "content": f"Summarize: {body}"}]})


def sent(sim: Simulator) -> Counter[str | None]:
    """How often each distinct request was answered by the simulator."""
    return Counter(e.body_sha256 for e in sim.log if e.status == 200)


def check(frames: list[list[str]], summaries: list[dict[str, Any]], sim: Simulator) -> None:
    """Each distinct request sent once in all; each call's rows are its sent and its found ones."""
    distinct = len({b for f in frames for b in f})
    counts = sent(sim)
    assert len(counts) == distinct and set(counts.values()) == {1}, counts.most_common(3)
    assert sum(s["requests_sent"] for s in summaries) == distinct
    for rows, s in zip(frames, summaries, strict=True):
        assert (s["rows"], s["rows_ok"], s["rows_failed"]) == (len(rows), len(rows), 0)
        assert s["rows_from_store"] + s["requests_sent"] + s["rows_failed"] == s["rows"]
    # What one call sent, the others found: the shared rows are from the store once per other call.
    shared = len(set(frames[0]).intersection(*frames[1:]))
    assert sum(s["rows_from_store"] for s in summaries) == shared * (len(frames) - 1)


def test_two_arun_calls_at_once_pay_each_shared_row_once(start_sim: StartSim) -> None:
    url, sim = start_sim(latency_ms=30)
    frames = [bodies("a"), bodies("b")]

    async def both() -> list[Any]:
        return list(await asyncio.gather(*(batch.arun(pd.DataFrame({"body": f}), **opts(url))
                                           for f in frames)))

    outs = asyncio.run(both())

    for rows, out in zip(frames, outs, strict=True):
        assert list(out["text"]) == [expected(b) for b in rows]
    check(frames, [out.attrs["batch"] for out in outs], sim)


def test_two_threads_calling_run_pay_each_shared_row_once(start_sim: StartSim) -> None:
    url, sim = start_sim(latency_ms=30)
    frames = [bodies("a"), bodies("b")]
    outs: dict[int, Any] = {}

    def call(i: int) -> None:
        outs[i] = batch.run(pd.DataFrame({"body": frames[i]}), **opts(url))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outs) == [0, 1]
    for i, rows in enumerate(frames):
        assert list(outs[i]["text"]) == [expected(b) for b in rows]
    check(frames, [outs[i].attrs["batch"] for i in range(2)], sim)


CALL = """
import json, sys
import pandas as pd
import batch
url, model, own, n_own, shared, concurrency = sys.argv[1:7]
rows = [f"{own} {i}" for i in range(int(n_own))] + [f"shared {i}" for i in range(int(shared))]
out = batch.run(pd.DataFrame({"body": rows}), model=model, prompt="Summarize: ${body}", max_new_tokens=1024,
                base_url=url, requests_per_minute=600000, tokens_per_minute=100000000,
                concurrency=int(concurrency), progress=False)
print(json.dumps({"texts": list(out["text"]), "summary": out.attrs["batch"]}))
"""


def _call(tmp_path: Path, url: str, own: str, n_own: int, shared: int,
          concurrency: int = 4) -> subprocess.Popen[str]:
    script = tmp_path / "call.py"
    script.write_text(CALL, encoding="utf-8")
    return subprocess.Popen([sys.executable, str(script), url, MODEL, own, str(n_own), str(shared),
                             str(concurrency)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_two_processes_pay_each_shared_row_once(tmp_path: Path, start_sim: StartSim) -> None:
    url, sim = start_sim(latency_ms=30)
    frames = [bodies("a"), bodies("b")]
    procs = [_call(tmp_path, url, own, 50, 100) for own in ("a", "b")]
    results = [p.communicate(timeout=120) for p in procs]

    summaries = []
    for rows, proc, (out, err) in zip(frames, procs, results, strict=True):
        assert proc.returncode == 0, err
        got = json.loads(out)
        assert got["texts"] == [expected(b) for b in rows]
        summaries.append(got["summary"])
    check(frames, summaries, sim)


def _second_call_started_sending(cache: Path) -> bool:
    """Whether the second call on the cache's store has claimed (or already answered) rows of its own:
    it did so in the transaction that found the rest claimed by the first, so it waits on those now."""
    second = "(SELECT id FROM runs ORDER BY id LIMIT 1 OFFSET 1)"
    for path in cache.glob("*.sqlite"):
        try:
            with sqlite3.connect(path) as db:
                return bool(db.execute(f"SELECT EXISTS (SELECT 1 FROM claims WHERE run = {second}) OR "
                                       f"EXISTS (SELECT 1 FROM answers WHERE run = {second})").fetchone()[0])
        except sqlite3.Error:
            pass
    return False


def test_a_claimant_killed_mid_run_leaves_its_rows_to_the_waiting_call(tmp_path: Path, start_sim: StartSim,
                                                                      cache: Path) -> None:
    url, sim = start_sim(latency_ms=100)
    claimant = _call(tmp_path, url, "gone", 0, 200, concurrency=2)  # claims all 200, sends them slowly
    wait_until(lambda: len(sent(sim)) >= 4, "the claimant's first answers")
    outs: list[Any] = []
    waiter = threading.Thread(target=lambda: outs.append(batch.run(
        pd.DataFrame({"body": bodies("own", 10, 200)}), **opts(url))))
    waiter.start()
    # The waiter has claimed its own 10 rows, so it waits on the claimant's 200 now.
    wait_until(lambda: _second_call_started_sending(cache) or not waiter.is_alive(), "the waiter's claims")
    claimant.send_signal(signal.SIGKILL)
    claimant.communicate(timeout=30)  # reaped: its pid is gone from this host
    waiter.join(timeout=120)

    assert not waiter.is_alive() and len(outs) == 1
    out = outs[0]
    rows = bodies("own", 10, 200)
    assert list(out["text"]) == [expected(b) for b in rows]
    summary = out.attrs["batch"]
    assert summary["rows_from_store"] + summary["requests_sent"] == len(rows)
    assert summary["rows_from_store"] >= 4  # the claimant's answers before it died
    # Only the requests on the claimant's wire when it died (at most its concurrency) went twice.
    counts = sent(sim)
    assert len(counts) == len(rows) and sum(counts.values()) <= len(rows) + 2


# -- the claims themselves --------------------------------------------------------------------------
def answer(fp: str, error: str | None = None) -> Answer:
    return Answer(fp, text=None if error else "text", error=error, permanent=error is not None)


def test_a_claim_is_taken_over_when_its_lease_lapses_or_its_process_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    a, b = Store(path, shared=True), Store(path, shared=True)
    try:
        a.begin_run()
        b.begin_run()
        ca, cb = Claims(a), Claims(b)
        assert ca.claim(["x", "y"], retry_failed=False) == (["x", "y"], {}, [])
        assert cb.claim(["x", "y", "z"], retry_failed=False) == (["z"], {"x": a.run_id, "y": a.run_id}, [])
        # Another host's claim whose lease has lapsed, and one of a process gone from this host.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert not alive(f"{socket.gethostname()}:{dead}") and alive("elsewhere:1")
        a.db.execute("UPDATE claims SET owner = 'elsewhere:1', expires = ? WHERE fingerprint = 'x'",
                     (time.time() - 1,))
        gone = f"{socket.gethostname()}:{dead}"
        a.db.execute("UPDATE claims SET owner = ? WHERE fingerprint = 'y'", (gone,))
        assert cb.poll({"x": a.run_id, "y": a.run_id}) == ([], ["x", "y"], {})
        assert cb.claim(["x", "y"], retry_failed=False) == (["x", "y"], {}, [])
        assert ca.poll({"z": b.run_id}) == ([], [], {})  # b holds z and lives: still waiting
    finally:
        a.close()
        b.close()


def test_the_claimants_answer_ends_the_wait_a_failure_too(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    a, b = Store(path, shared=True), Store(path, shared=True)
    try:
        a.begin_run()
        b.begin_run()
        ca, cb = Claims(a), Claims(b)
        ca.claim(["ok", "bad"], retry_failed=False)
        a.put(answer("ok"))
        a.put(answer("bad", "400: invalid"))
        a.flush()  # the commit that stores them ends their claims, in the same transaction
        assert a.db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert cb.poll({"ok": a.run_id, "bad": a.run_id}) == (["ok", "bad"], [], {})
        ca.claim(["left"], retry_failed=False)
        ca.release()  # never answered: free for the waiter to send
        assert cb.poll({"left": a.run_id}) == ([], ["left"], {})
    finally:
        a.close()
        b.close()
