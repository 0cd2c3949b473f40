"""The SQL door: `batch.register_duckdb(con, name, ...)` against the simulator on a real socket.

Each answer lands on its row over 10,000 rows (five vectors) paced at the server's limit with no 429
storm, counted at the simulator; a query again sends nothing (and `batch.run` with the same options
finds the answers), consecutive queries share one pace, failed rows are NULL (their error in the
details struct), two queries at once from two threads are both right and send each request once, and
an interrupted query (`con.interrupt()`, or Ctrl-C) keeps what it was answered.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import wait_until

import batch
from batch.doors.sql import Registration
from batch.sim import Simulator, sim_answer

MODEL = "openai/gpt-oss-20b"
StartSim = Callable[..., tuple[str, Simulator]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_sql_door_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    return tmp_path / "xdg" / "batch"


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture
def registered() -> Iterator[list[Registration]]:
    """Registrations a test makes, closed at its end (the loop thread and the store with them)."""
    made: list[Registration] = []
    yield made
    for reg in made:
        reg.close()


def expected(prompt: str) -> str:
    return sim_answer({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})


def opts(url: str, **more: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_new_tokens": 64, "base_url": url, "requests_per_minute": 6_000_000,
            "tokens_per_minute": 10**9, "concurrency": 16, **more}


def chats(sim: Simulator) -> int:
    return sum(1 for e in sim.log if e.status == 200)


def answered(sim: Simulator) -> Counter[str]:
    return Counter(e.body_sha256 for e in sim.log if e.status == 200 and e.body_sha256)


def prompts_table(con: duckdb.DuckDBPyConnection, name: str, n: int, tag: str = "row") -> list[str]:
    prompts = [f"{tag} {i}: tell me about {i * 7919 % 1000}" for i in range(n)]
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM (SELECT unnest($p) AS p, "
                "generate_subscripts($p, 1) AS id)", {"p": prompts})
    return prompts


def register(made: list[Registration], con: duckdb.DuckDBPyConnection, *args: Any,
             **options: Any) -> Registration:
    reg = batch.register_duckdb(con, *args, **options)
    made.append(reg)
    return reg


def busiest_window(sim: Simulator, seconds: float) -> int:
    """The most requests the simulator answered within any `seconds`, by its own log's stamps."""
    stamps = sorted(e.t for e in sim.log if e.status == 200)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_10000_rows_over_many_vectors_paced_at_the_limit_and_a_query_again_sends_nothing(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    # The server allows 60,000 requests a minute (1000 a second, 3 s of burst); the function paces at
    # the same limit, 64 requests at a time. DuckDB hands it 5 vectors of 2048 rows: one pacer for
    # them all keeps them at 1000 a second after its 2 s burst (about 10 s for the 10,000). Unpaced,
    # or with a fresh pacer for each vector, the 2000+ a second the test machine sends spend the
    # server's bucket within seconds (measured unpaced: 36 429s, 6584 answers within 4 s).
    url, sim = start_sim(rpm=60_000, burst_s=3.0)
    prompts = prompts_table(con, "t", 10_000)
    con.execute("INSERT INTO t VALUES (NULL, 10001), ($p, 10002)", {"p": prompts[5]})  # a repeat
    paced = opts(url, requests_per_minute=60_000, concurrency=64)
    register(registered, con, "ask", **paced)
    rows = con.execute("SELECT id, ask(p) FROM t ORDER BY id").fetchall()
    assert [text for _, text in rows] == [expected(p) for p in prompts] + [None, expected(prompts[5])]
    assert chats(sim) == 10_000 and max(answered(sim).values()) == 1  # NULL: not sent; the repeat: once
    assert sum(e.status == 429 for e in sim.log) <= 2  # no storm
    # At the limit, counted at the simulator: within any 4 s, 4 s of the rate and the pacer's 2 s burst.
    assert busiest_window(sim, 4.0) <= 4 * 1000 + 2 * 1000 + 1
    before = len(sim.log)
    again = con.execute("SELECT id, ask(p) FROM t ORDER BY id").fetchall()
    assert again == rows and len(sim.log) == before  # nothing sent
    # The Python door, with the same options over a table of the same prompts, finds every answer.
    out = batch.run(pa.table({"prompt": prompts}), prompt="${prompt}", progress=False, **paced)
    assert out.column("text").to_pylist() == [expected(p) for p in prompts]
    assert chats(sim) == 10_000


def test_consecutive_queries_share_one_pace_at_the_servers_limit(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    # The server holds 3 s of 3000/min; the job paces at the same 3000/min with a 2 s burst. A pace
    # per query would start the second with a fresh burst on an emptied server bucket: 429s.
    url, sim = start_sim(rpm=3000, burst_s=3.0)
    first, second = prompts_table(con, "a", 200, "first"), prompts_table(con, "b", 200, "second")
    register(registered, con, "ask", **opts(url, requests_per_minute=3000, concurrency=8))
    assert [r[0] for r in con.execute("SELECT ask(p) FROM a ORDER BY id").fetchall()] == \
        [expected(p) for p in first]
    assert [r[0] for r in con.execute("SELECT ask(p) FROM b ORDER BY id").fetchall()] == \
        [expected(p) for p in second]
    assert sum(e.status == 429 for e in sim.log) <= 2
    assert chats(sim) == 400


def test_failed_rows_are_null_and_the_details_say_why(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    url, sim = start_sim()
    prompts = prompts_table(con, "t", 300)
    too_long = "x" * 530_000  # past the model's context window: a permanent 400
    con.execute("UPDATE t SET p = $p WHERE id IN (150, 250)", {"p": too_long})
    register(registered, con, "ask", **opts(url, concurrency=4))
    rows = con.execute("SELECT id, ask(p), ask_details(p) FROM t ORDER BY id").fetchall()
    for id_, text, details in rows:
        if id_ in (150, 250):
            assert text is None and details["text"] is None
            assert "context length" in details["error"] and details["cost_usd"] is None
        else:
            assert text == details["text"] == expected(prompts[id_ - 1]) and details["error"] is None
            assert details["input_tokens"] > 0 and details["output_tokens"] > 0 and details["cost_usd"] > 0
    assert con.execute("SELECT ask_details(NULL)").fetchone() == (None,)
    sent = len(sim.log)
    con.execute("SELECT ask(p) FROM t").fetchall()
    assert len(sim.log) == sent  # a permanent failure is an answer too: not sent again


def test_a_transient_failure_is_null_and_a_new_registration_asks_again(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    url, sim = start_sim(fault_rate=0.2, faults=("500",), seed=3)
    prompts = prompts_table(con, "t", 200)
    register(registered, con, "ask", **opts(url, max_attempts=1))
    texts = [r[0] for r in con.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()]
    failed = [i for i, t in enumerate(texts) if t is None]
    assert failed and all(texts[i] == expected(p) for i, p in enumerate(prompts) if i not in failed)
    sim.config.fault_rate = 0.0
    registered.pop().close()
    register(registered, con, "ask", **opts(url, max_attempts=1))  # the same name, registered again
    before = len(sim.log)
    assert [r[0] for r in con.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()] == \
        [expected(p) for p in prompts]
    assert len(sim.log) - before == len(failed)


def test_two_queries_at_once_from_two_threads(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, sim = start_sim(latency_ms=2)
    prompts = prompts_table(con, "t", 3000)
    reg = register(registered, con, "ask", **opts(url))
    results: dict[int, list[Any]] = {}
    inside, most, lock = [0], [0], threading.Lock()
    answers = reg.answers

    def counted(vector: Any) -> Any:  # how many queries are in the function at once
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return answers(vector)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(reg, "answers", counted)

    def query(k: int) -> None:
        cursor = con.cursor()
        try:  # the second reads the table backwards (the sort before the call): the two meet in the middle
            order = "id" if k == 0 else "id DESC"
            results[k] = [r[0] for r in cursor.execute(
                f"SELECT ask(p) FROM (SELECT p, id FROM t ORDER BY {order}) ORDER BY {order}").fetchall()]
        finally:
            cursor.close()

    threads = [threading.Thread(target=query, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = [expected(p) for p in prompts]
    assert results[0] == want and results[1] == want[::-1]
    assert most[0] == 2  # both queries were answering at once
    assert sum(answered(sim).values()) == 3000 and max(answered(sim).values()) == 1  # each request once


def test_an_interrupted_query_keeps_its_answers_and_a_rerun_pays_only_the_rest(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    url, sim = start_sim(latency_ms=5)
    prompts = prompts_table(con, "t", 6000)
    con.execute("SET threads = 1")  # one vector after another: the interruption lands between two
    reg = register(registered, con, "ask", **opts(url, concurrency=8))

    def interrupt() -> None:
        wait_until(lambda: chats(sim) >= 50, "the first answers")
        con.interrupt()

    stopper = threading.Thread(target=interrupt)
    stopper.start()
    with pytest.raises(duckdb.InterruptException):
        con.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()
    stopper.join()
    paid = chats(sim)
    assert 0 < paid < 6000
    reg.close()  # a new connection and registration: the answers are in the store, not in memory
    other = duckdb.connect()
    try:
        other.execute("CREATE TABLE t AS SELECT * FROM (SELECT unnest($p) AS p, generate_subscripts($p, 1) "
                      "AS id)", {"p": prompts})
        register(registered, other, "ask", **opts(url, concurrency=8))
        assert [r[0] for r in other.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()] == \
            [expected(p) for p in prompts]
    finally:
        other.close()
    assert chats(sim) == 6000 and max(answered(sim).values()) == 1


def test_ctrl_c_during_a_query_keeps_what_was_answered(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    # A real SIGINT to the main thread, which runs the query (one DuckDB thread): KeyboardInterrupt
    # inside the function, mid-vector. The requests on the wire land; DuckDB reports the stop.
    url, sim = start_sim(latency_ms=5)
    prompts = prompts_table(con, "t", 4000)
    con.execute("SET threads = 1")
    register(registered, con, "ask", **opts(url, concurrency=8))

    def press() -> None:
        wait_until(lambda: chats(sim) >= 100, "the first answers")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    with pytest.raises(duckdb.Error, match="interrupted; the answers received are saved"):
        con.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()
    presser.join()
    assert 100 <= chats(sim) < 2048  # stopped within the first vector
    assert [r[0] for r in con.execute("SELECT ask(p) FROM t ORDER BY id").fetchall()] == \
        [expected(p) for p in prompts]
    assert chats(sim) == 4000 and max(answered(sim).values()) == 1


def test_options_are_checked_once_at_registration(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection, registered: list[Registration]) -> None:
    url, sim = start_sim()
    with pytest.raises(batch.JobError, match="temprature=: unknown option; did you mean temperature="):
        batch.register_duckdb(con, "ask", temprature=0, **opts(url))
    with pytest.raises(batch.JobError, match=r"must use \$\{prompt\}"):
        batch.register_duckdb(con, "ask", prompt="Say hi", **opts(url))
    with pytest.raises(batch.JobError, match="max_new_tokens="):
        batch.register_duckdb(con, "ask", **opts(url, max_new_tokens=0))
    assert sim.log == []
    # A template around the argument.
    register(registered, con, "summed_up", **opts(url), prompt="Summarize: ${prompt}")
    assert con.execute("SELECT summed_up('the sky')").fetchone() == (expected("Summarize: the sky"),)


def test_a_closed_registration_takes_its_functions_off_the_connection(
        start_sim: StartSim, con: duckdb.DuckDBPyConnection) -> None:
    url, _ = start_sim()
    with batch.register_duckdb(con, "ask", **opts(url)) as reg:
        assert con.execute("SELECT ask('hi')").fetchall() == [(expected("hi"),)]
    assert reg.name == "ask"
    with pytest.raises(duckdb.CatalogException, match="ask"):  # taken off the connection
        con.execute("SELECT ask('hi again')").fetchall()
    with pytest.raises(batch.Stopped, match="closed"):  # a call that was under way meets a closed door
        reg.answers(["hi again"])
