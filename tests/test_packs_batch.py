"""More rows per request through Groq's Batch API (`--mode batch`), against the simulator's Batch API:
one JSONL line a pack, taken apart at merge; rows whose item came back unusable go into a new batch in
a smaller pack; usage columns add up to what the simulator billed; a re-run submits nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from conftest import MODEL
from nasty import write_csv
from test_packs import PROMPT, RunBatch, StartSim, WriteJob, echo, plain_rows, render

from batch.sim import read_pack


def billed(sim: Any) -> tuple[int, int, int]:
    """Prompt and completion tokens the simulator's batches billed, and the pack lines they held."""
    prompt = completion = packs = 0
    for b in sim.batches.values():
        output, _ = b.results()
        for line in output:
            usage = line["response"]["body"]["usage"]
            prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
        packs += sum(read_pack(line.body) is not None for line in b.lines)
    return prompt, completion, packs


def test_a_packed_job_through_the_batch_api_answers_every_row_with_its_own_item(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(pack_fault_rate=0.25, seed=11, batch_validate_s=0.05, batch_finalize_s=0.05)
    rows = plain_rows(80)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "rows-per-request": 8},
                    run={"mode": "batch", "poll-interval": 0.2})

    proc = run_batch(job, "--base-url", url)
    assert proc.returncode in (0, 1), proc.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert len(out) == len(rows)
    answered = [(r, o) for r, o in zip(rows, out, strict=True) if o["error"] is None]
    assert len(answered) >= len(rows) - 2, [o["error"] for o in out if o["error"]]
    for r, o in answered:  # never another row's answer
        assert o["text"] == echo(render(r)) and o["model"] == MODEL, (r, o["text"])
    # Packs went as single lines, and the rows a damaged pack did not answer went again, smaller.
    prompt, completion, packs = billed(sim)
    assert packs >= 10 and len(sim.batches) >= 2
    assert report["rows_resent"] > 0 and "8" in report["pack_sizes"]
    assert all(1 <= o["rows_in_request"] <= 8 for o in out)
    assert any(o["rows_in_request"] < 8 for o, in zip(out, strict=True) if o["attempts"] > 1)
    # The rows' usage adds up to what the simulator billed, and to the run's figures.
    assert sum(o["input_tokens"] or 0 for o in out) == prompt == report["input_tokens"]
    assert sum(o["output_tokens"] or 0 for o in out) == completion == report["output_tokens"]

    # A re-run submits nothing: every row's answer is in the store.
    before = len(sim.batches)
    again = run_batch(job, "--base-url", url)
    assert again.returncode == proc.returncode, again.stderr
    assert len(sim.batches) == before


def test_rows_in_a_pack_line_of_an_open_batch_are_not_submitted_again(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    """A run that leaves its batch open (--no-wait): the next one attaches to it and submits none of
    the rows its pack lines carry; once it has ended, every row has its own answer."""
    url, sim = start_sim(batch_validate_s=0.05, batch_finalize_s=0.05, batch_lines_per_s=0.5)
    rows = plain_rows(24)
    write_csv(rows, tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT, "rows-per-request": 6},
                    run={"mode": "batch", "poll-interval": 0.2})
    first = run_batch(job, "--base-url", url, "--no-wait")
    assert first.returncode == 3, first.stderr
    assert len(sim.batches) == 1 and sum(len(b.lines) for b in sim.batches.values()) == 4
    again = run_batch(job, "--base-url", url, "--no-wait")
    assert again.returncode == 3, again.stderr
    assert len(sim.batches) == 1, "rows held by an open batch's pack lines were submitted again"
    for b in sim.batches.values():
        b.lines_per_s = 1000.0  # let it finish
    done = run_batch(job, "--base-url", url)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [o["text"] for o in out] == [echo(render(r)) for r in rows] and len(sim.batches) == 1
