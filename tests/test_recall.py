"""The last run's answers in row order (`recall`): a re-run takes a row's answer from there only when the
row's request is the one on the same line last time, from the same store, and with a good answer;
every other row is looked up in the store (and sent only if the store has no answer either)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from nasty import nasty_rows, write_csv
from test_e2e import (
    PROMPT,
    RunBatch,
    StartSim,
    WriteJob,
    answered_twice,
    chat_log,
    check_rows,
    expected_exit,
    plain_rows,
    read_output,
)

from batch.sim import Simulator
from batch.store.answers import Store
from batch.store.fingerprints import ROW
from batch.store.recall import Recall, RecallWriter, identity, recall_path

RECALL = "out.parquet.state.sqlite.recall"


def _report(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_edited_moved_and_new_rows_get_their_own_answers(tmp_path: Path, simulator: tuple[str, Simulator],
                                                         write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(60)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    assert len(chat_log(sim)) == 60 and (tmp_path / RECALL).exists()

    # A new row on top (every later row moves down one line), one row edited, five rows removed.
    edited = {**rows[10], "experience": "edited experience"}
    changed = [*plain_rows(1, start=500, tag="new"), *rows[:10], edited, *rows[11:20], *rows[25:]]
    write_csv(changed, tmp_path / "in.csv")
    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    assert len(chat_log(sim)) == 62, "only the new and the edited row are sent"
    check_rows(changed, read_output(tmp_path / "out.parquet")[1])
    assert _report(tmp_path)["rows_from_store"] == 54

    # Unchanged since: nothing is sent, the output is the same, and the recall is not rewritten.
    before = (tmp_path / RECALL).stat()
    _, out2 = read_output(tmp_path / "out.parquet")
    third = run_batch(job, "--base-url", url)

    assert third.returncode == 0, third.stderr
    assert len(chat_log(sim)) == 62
    assert read_output(tmp_path / "out.parquet")[1] == out2
    after = (tmp_path / RECALL).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_recalled_output_is_the_output_the_store_gives(tmp_path: Path, simulator: tuple[str, Simulator],
                                                        write_job: WriteJob, run_batch: RunBatch) -> None:
    """Hostile rows (quotes, newlines, unicode, nulls), some of them edited, moved and duplicated after
    the first run: the output a recalled re-run writes is, cell for cell, the one the store alone gives."""
    url, sim = simulator
    rows = nasty_rows(600, seed=7)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == expected_exit(rows)

    changed = [*rows[300:320], *rows[:300], *rows[320:590], *rows[100:110]]
    changed[50] = {**changed[50], "experience": "edited \"quoted\"\nexperience"}
    write_csv(changed, tmp_path / "in.csv")
    recalled = run_batch(job, "--base-url", url)
    _, with_recall = read_output(tmp_path / "out.parquet")
    (tmp_path / RECALL).unlink()
    alone = run_batch(job, "--base-url", url)

    assert recalled.returncode == alone.returncode == expected_exit(changed), recalled.stderr + alone.stderr
    assert read_output(tmp_path / "out.parquet")[1] == with_recall
    check_rows(changed, with_recall)
    assert answered_twice(sim) == []


def test_a_state_started_over_sends_every_row_again(tmp_path: Path, simulator: tuple[str, Simulator],
                                                    write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(20)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    _, first = read_output(tmp_path / "out.parquet")

    for p in tmp_path.glob("out.parquet.state.sqlite*"):
        if not p.name.endswith(".recall"):
            p.unlink()  # the user starts over; the recall file of the old state is still there
    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    assert len(chat_log(sim)) == 40, "answers of a deleted state were taken from the old recall"
    _, out = read_output(tmp_path / "out.parquet")
    check_rows(rows, out)
    assert {o["request_id"] for o in out}.isdisjoint(o["request_id"] for o in first)


def test_a_damaged_recall_only_means_the_rows_are_looked_up(tmp_path: Path, simulator: tuple[str, Simulator],
                                                            write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = simulator
    rows = plain_rows(3000)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT})
    assert run_batch(job, "--base-url", url).returncode == 0
    recall = tmp_path / RECALL
    _, first = read_output(tmp_path / "out.parquet")

    for damage in (lambda b: b[:len(b) // 2], lambda b: b"not arrow at all", lambda b: b""):
        recall.write_bytes(damage(recall.read_bytes()))
        proc = run_batch(job, "--base-url", url)
        assert proc.returncode == 0, proc.stderr
        assert len(chat_log(sim)) == 3000
        assert read_output(tmp_path / "out.parquet")[1] == first
        assert _report(tmp_path)["rows_from_store"] == 3000


def test_failed_rows_are_not_recalled(tmp_path: Path, start_sim: StartSim, write_job: WriteJob,
                                      run_batch: RunBatch) -> None:
    url, sim = start_sim(fault_rate=1.0, faults=("500",))
    rows = plain_rows(8)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, limits={"max-attempts": 1})
    assert run_batch(job, "--base-url", url).returncode == 1
    sim.config.fault_rate = 0.0

    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    assert len(chat_log(sim)) == 16
    check_rows(rows, read_output(tmp_path / "out.parquet")[1])


def _answers(fps: list[str | None], good: list[bool]) -> pa.StructArray:
    names = [f.name for f in ROW]
    rows = [None if fp is None else {**dict.fromkeys(names), "fingerprint": fp, "text": f"answer {fp}",
                                     "error": None if ok else "500", "permanent": 0, "run": 1}
            for fp, ok in zip(fps, good, strict=True)]
    return pa.array(rows, ROW)


def test_rows_are_matched_line_by_line_whatever_the_group_sizes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    writer = RecallWriter(store)
    fps: list[str | None] = [f"fp{i}" for i in range(8)]
    fps[5] = None  # a row that never became a request
    good = [i != 2 for i in range(8)]  # row 2's answer is a failure: not kept
    for lo, hi in ((0, 3), (3, 8)):
        writer.add(pa.array(fps[lo:hi], pa.string()), _answers(fps[lo:hi], good[lo:hi]))
    writer.commit()
    assert recall_path(store).exists() and not list(tmp_path.glob(".*.tmp"))

    now = [*fps]
    now[6] = "changed"
    recall = Recall(store)
    got = [recall.match(now[lo:hi]) for lo, hi in ((0, 4), (4, 5), (5, 8))]
    got.append(recall.match(["fp8", None]))  # more rows than last time
    recall.close()

    hits = [h for _, hit, _ in got for h in hit.to_pylist()]
    assert hits == [True, True, False, True, True, False, False, True, False, False]
    texts = pc.struct_field(pa.concat_arrays([a for _, _, a in got]), "text").to_pylist()
    assert [t for t, h in zip(texts, hits, strict=True) if h] == [
        "answer fp0", "answer fp1", "answer fp3", "answer fp4", "answer fp7"]
    assert not recall.unchanged

    store.close()
    other = Store(tmp_path / "other.sqlite")  # another store: its identity differs
    os.replace(recall_path(store), recall_path(other))
    foreign = Recall(other)
    _, hit, _ = foreign.match(fps[:4])
    assert hit.true_count == 0 and not foreign.unchanged
    other.close()


def test_batch_mode_submits_only_the_rows_the_recall_does_not_answer(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(batch_validate_s=0.05, batch_finalize_s=0.05)
    rows = plain_rows(40)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run={"mode": "batch", "poll-interval": 0.2})
    assert run_batch(job, "--base-url", url).returncode == 0
    assert (tmp_path / RECALL).exists()

    changed = [*rows[:5], {**rows[5], "experience": "edited experience"}, *rows[6:]]
    write_csv(changed, tmp_path / "in.csv")
    second = run_batch(job, "--base-url", url)

    assert second.returncode == 0, second.stderr
    assert sim.log == [] and sim.batches_created == 2
    assert [b.total for b in sim.batches.values()] == [40, 1], "only the edited row is submitted"
    check_rows(changed, read_output(tmp_path / "out.parquet")[1], batch=True)
    assert _report(tmp_path)["rows_from_store"] == 39

    before = (tmp_path / RECALL).stat()
    third = run_batch(job, "--base-url", url)
    assert third.returncode == 0, third.stderr
    assert sim.batches_created == 2
    after = (tmp_path / RECALL).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten unchanged"


def test_an_earlier_versions_recall_file_is_read_with_the_new_fields_null(tmp_path: Path) -> None:
    """A recall file written before rows_in_request existed still answers its rows (no lookups)."""
    store = Store(tmp_path / "state.sqlite")
    old_row = pa.struct([f for f in ROW if f.name != "rows_in_request"])
    fps: list[str | None] = [f"fp{i}" for i in range(3)]
    rows = [{**dict.fromkeys(old_row.names), "fingerprint": fp, "text": f"answer {fp}", "permanent": 0,
             "run": 1} for fp in fps]
    old = pa.schema([("fingerprint", pa.string()), ("answer", old_row)])
    with pa.ipc.new_stream(str(recall_path(store)), old.with_metadata({b"store": identity(store)})) as w:
        w.write_batch(pa.record_batch([pa.array(fps), pa.array(rows, old_row)], schema=old))
    recall = Recall(store)
    _, hit, answers = recall.match(fps)
    recall.close()
    store.close()
    assert hit.to_pylist() == [True, True, True] and recall.unchanged
    assert pc.struct_field(answers, "text").to_pylist() == [f"answer {fp}" for fp in fps]
    assert pc.struct_field(answers, "rows_in_request").to_pylist() == [None, None, None]
