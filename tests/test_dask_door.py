"""The Python door with a Dask DataFrame: run on the Dask client in use (a LocalCluster of two worker
processes on 127.0.0.1) or on a LocalCluster for the call, a Dask DataFrame back with every answer on
its row and in order, a re-run that sends nothing, a plan that sends nothing, a run stopped by a daily
quota (its partial a Dask DataFrame) resumed without paying twice, and a worker process SIGKILLed
mid-run under a rate limit (no row lost, the one limit held for the cluster). Every request goes to a
real simulator on a loopback socket, whose log counts what was sent; the per-user cache lives under a
temporary XDG_CACHE_HOME."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from clusterkit import answered, busiest_window, local_cluster, refused, wait_for

import batch
from batch.sim import Simulator, sim_answer

dd = pytest.importorskip("dask.dataframe")

MODEL = "openai/gpt-oss-20b"
HOSTILE = ['he said "hi",\nthen left', "a\r\nb\rc", "naïve — 漢字 🎉 \u202eRTL", "${body} {0} $$ 100%",
           "'single' and \"double\" quotes", "x" * 500]
StartSim = Callable[..., tuple[str, Simulator]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_dask_door_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    return tmp_path / "xdg" / "batch"


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """Two worker processes on 127.0.0.1; its client is the one in use (Dask's default client)."""
    with local_cluster(2) as (_, client):
        yield client


def opts(url: str) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Summarize: ${body}", "max_new_tokens": 1024, "base_url": url,
            "progress": False, "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000,
            "concurrency": 4}


def sent(sim: Simulator) -> int:
    return sum(1 for e in sim.log if e.status == 200)


def frame() -> pd.DataFrame:
    """40 rows, hostile text and nulls, for 8 partitions of 5."""
    bodies = [None if i % 7 == 3 else f"row {i}: {HOSTILE[i % len(HOSTILE)]}" for i in range(40)]
    return pd.DataFrame({"id": range(40), "body": bodies, "note": [None if i % 2 else "ü\n\"q\"" for i in
                                                                 range(40)]})


def test_without_a_client_a_local_cluster_for_the_call(start_sim: StartSim, cache: Path) -> None:
    # First in the module: the module's cluster (below) is not started yet.
    distributed = pytest.importorskip("distributed")
    with pytest.raises(ValueError):  # no client in use in this test
        distributed.default_client()
    url, sim = start_sim()
    df = pd.DataFrame({"body": ["one", "two, \"three\"", None, "四"]})

    out = batch.run(dd.from_pandas(df, npartitions=2), **opts(url))

    got = out.compute()
    assert list(got["body"].fillna("<null>")) == ["one", "two, \"three\"", "<null>", "四"]
    assert got["text"].notna().sum() == 3 and sent(sim) == 3


def test_a_dask_frame_in_a_dask_frame_out_every_answer_on_its_row(
        dask_client: Any, start_sim: StartSim, cache: Path) -> None:
    url, sim = start_sim()
    df = frame()
    ddf = dd.from_pandas(df, npartitions=8)
    assert ddf.npartitions == 8

    out = batch.run(ddf, **opts(url))

    assert isinstance(out, dd.DataFrame) and out.npartitions == 8
    got = out.compute()
    given = ddf.compute()
    pd.testing.assert_frame_equal(got[list(given.columns)], given)  # index, order, values, hostile text
    for body, text, error in zip(given["body"], got["text"], got["error"], strict=True):
        if pd.isna(body):
            assert pd.isna(text) and "'body' is empty" in str(error)
        else:
            assert text == sim_answer({"model": MODEL, "messages": [
                {"role": "user", "content": f"Summarize: {body}"}]}) and pd.isna(error)
    answered = int(given["body"].notna().sum())
    assert sent(sim) == answered
    summary = out.attrs["batch"]
    assert (summary["rows"], summary["rows_ok"]) == (40, answered)
    # Every partition's rows stay in their partition, in order.
    for i in range(8):
        assert list(out.get_partition(i).compute()["id"]) == list(range(5 * i, 5 * i + 5))

    again = batch.run(dd.from_pandas(df.copy(), npartitions=8), **opts(url))  # the same call, rebuilt
    assert sent(sim) == answered  # nothing sent again
    pd.testing.assert_frame_equal(again.compute(), got)


def test_plan_of_a_dask_frame_sends_nothing(dask_client: Any, start_sim: StartSim, cache: Path) -> None:
    url, sim = start_sim()
    ddf = dd.from_pandas(frame(), npartitions=8)

    made = batch.plan(ddf, **opts(url))

    assert made.rows == 40
    assert sent(sim) == 0 and not sim.log


def test_a_stopped_run_gives_the_parts_so_far_as_a_dask_frame_and_resumes(
        dask_client: Any, start_sim: StartSim, cache: Path) -> None:
    # A daily quota of 12 requests: the run stops with some partitions written; the next call, once
    # the quota resets, sends only what the first did not get.
    url, sim = start_sim(rpd=12, latency_ms=20)
    df = pd.DataFrame({"id": range(40), "body": [f"stop {i}: {HOSTILE[i % 6]}" for i in range(40)]})
    ddf = dd.from_pandas(df, npartitions=8)

    with pytest.raises(batch.Stopped) as info:
        batch.run(ddf, **opts(url))

    partial = info.value.partial
    # Each worker runs one partition at a time, so the first two finish within the quota: the
    # partitions finished so far, whole, in order, answered.
    assert isinstance(partial, dd.DataFrame)
    got = partial.compute()
    assert len(got) >= 10 and len(got) % 5 == 0 and got["text"].notna().all()
    assert got["id"].is_monotonic_increasing and set(got["id"]) <= set(range(40))
    first = sent(sim)
    assert 0 < first <= 12
    sim.config.rpd = 1000
    out = batch.run(ddf, **opts(url)).compute()
    assert list(out["id"]) == list(range(40)) and out["text"].notna().all()
    assert sent(sim) == 40  # each row paid once across both calls


def test_with_state_a_grown_frame_sends_only_its_new_rows(
        dask_client: Any, start_sim: StartSim, tmp_path: Path) -> None:
    url, sim = start_sim()
    ddf = dd.from_pandas(frame(), npartitions=8)
    batch.run(ddf, **opts(url), state=tmp_path / "state")
    first = sent(sim)
    more = dd.from_pandas(pd.DataFrame({"id": range(40, 44), "body": ["new a", "new b", None, "new\r\nc"],
                                        "note": ["n"] * 4}, index=range(40, 44)), npartitions=1)
    grown = dd.concat([ddf, more])

    out = batch.run(grown, **opts(url), state=tmp_path / "state")

    assert sent(sim) == first + 3  # the three new rows with a body; the others from the journals
    got = out.compute()
    assert out.npartitions == 9 and list(got["id"]) == list(range(44))
    assert got.loc[got["body"].notna(), "text"].notna().all()


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_run_loses_no_row_and_the_limit_holds_for_the_cluster(
        dask_client: Any, start_sim: StartSim, cache: Path) -> None:
    # The server allows 1200 requests a minute (3 s of burst); the job paces at the same 1200/min for
    # the whole cluster (the scheduler's one rate starts empty: 20 a second from the first request),
    # so 160 rows take about 8 s. Once the simulator has answered 30, one busy worker is SIGKILLed:
    # Dask runs its partition again on the worker left (or the one its nanny restarts), which resumes
    # from the partition's journal.
    url, sim = start_sim(rpm=1200, burst_s=3.0, latency_ms=50)
    rows = 160
    df = pd.DataFrame({"id": range(rows), "body": [f"kill {i}: {HOSTILE[i % len(HOSTILE)]}" for i in
                                                   range(rows)]})
    ddf = dd.from_pandas(df, npartitions=8)
    assert ddf.npartitions == 8
    pids: dict[str, int] = dask_client.run(os.getpid)

    def busy() -> list[str]:
        """The workers running a partition (a task of the run: `batch-<job>-<nonce>-part-NNNNN`)."""
        return [w for w, keys in dask_client.processing().items() if any("-part-" in str(k) for k in keys)]

    def kill_a_busy_worker() -> int:
        wait_for(lambda: sent(sim) >= 30 and bool(busy()), "30 answers and a worker on a partition",
                 timeout=60)
        at_kill = sent(sim)
        os.kill(pids[busy()[0]], signal.SIGKILL)
        return at_kill

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        killer = pool.submit(kill_a_busy_worker)
        out = batch.run(ddf, **{**opts(url), "requests_per_minute": 1200})
        at_kill = killer.result(timeout=60)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the next test

    assert at_kill < rows  # killed mid-run
    # Nothing lost: every row, in order and in its partition, with its own answer (the simulator
    # echoes the prompt after the model's name).
    assert out.npartitions == 8
    got = out.compute()
    assert list(got["id"]) == list(range(rows)) and got["error"].isna().all()
    assert list(got["text"]) == [f"[{MODEL}] Summarize: {body}" for body in df["body"]]
    for i in range(8):
        assert list(out.get_partition(i).compute()["id"]) == list(range(20 * i, 20 * i + 20))
    # Counted at the simulator: each row's request answered, none refused, and at most what the
    # killed worker had on the wire (its concurrency) paid twice; the summary counts what this run
    # paid, the killed worker's committed answers included (bought by this run, not found in a store).
    counts = answered(sim)
    paid = sum(counts.values())
    assert len(counts) == rows and paid - rows <= 4
    assert refused(sim) == 0
    summary = out.attrs["batch"]
    assert summary["rows"] == rows and summary["rows_ok"] == rows and summary["rows_from_store"] == 0
    assert paid - 4 <= summary["requests_sent"] <= paid
    # The limit held for the cluster: 20 a second, with at most a lease's slack on top. Two workers
    # pacing themselves at 1200/min would send 40 a second (160 within 4 s) and draw 429s once the
    # server's 3 s of burst were spent.
    assert busiest_window(sim, 1.0) <= 20 + 40 + 1
    assert busiest_window(sim, 4.0) <= 4 * 20 + 40 + 1
