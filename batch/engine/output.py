"""Pass 2: every input row once, in input order, with its answer from the store, into the output file.

    rows ─► fingerprints (pass 1's `RowFingerprints`, else rendered) ─► store.answer_rows ─► sink

Column-wise: a chunk's distinct fingerprints go to the store in one query, the answers come back as
columns, and each row takes its answer's position (`index_in` / `take`), so no object is built per
row. A structured answer is checked against the job's response format when it arrives
(`structured.judge`) and again here, so an answer an earlier version stored as good but that fits no
column (an integer beyond int64) fails its row, with its raw text, instead of breaking the output.
Failed rows are noted for the run report (`timeline.Failures`: the first few, and counts by kind).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch.errors import Stopped
from batch.job import schema as structured
from batch.job.config import Job
from batch.render.prompts import Renderer, renderer_for
from batch.report.timeline import Failures
from batch.store.answers import Store
from batch.store.fingerprints import FIELDS, ROW, FingerprintReader, RowFingerprints, struct_of
from batch.store.recall import RecallWriter
from batch.tables.sink import OutputWriter
from batch.tables.source import Rows

NO_ANSWER = "no answer was recorded for this row; run the job again"  # cannot happen after pass 1
@dataclass(frozen=True)
class Written:
    rows: int
    ok: int
    failed: int
    from_store: int  # answers an earlier run paid for
    from_store_failed: int = 0  # of them, rows that failed (in that run, or now its answer's check)


def write_output(rows: Rows, renderer: Renderer, store: Store, *, path: Path, fmt: str, text_column: str,
                 response_format: Mapping[str, Any] | None, limit: int | None,
                 keys: RowFingerprints | None = None, failures: Failures | None = None,
                 halt: threading.Event | None = None, recall: RecallWriter | None = None) -> Written:
    """`keys`: pass 1's fingerprints of every row, when it kept them (else rows are rendered here).
    `failures`, when given, collects the failed rows (the first few, and their kinds) for the report.
    `halt`, once set, stops the writing after the current chunk (the output is left as it was).
    `recall`, when given, gets every row's fingerprint and answer (the caller commits it)."""
    ok = failed = from_store = from_store_failed = 0
    shape = structured.shape_of(response_format)
    reader: FingerprintReader | None = keys.reader() if keys is not None and keys.complete else None
    with OutputWriter(path, fmt, rows.schema, text_column, shape) as out:
        for row0, chunk in rows.numbered(limit):
            if halt is not None and halt.is_set():
                raise Stopped("stopped while writing the output; the previous output is unchanged")
            fps, errors, held = reader.take(chunk.num_rows) if reader else _render(renderer, chunk, row0)
            cols, earlier = _answers(store, fps, errors, held, recall)
            cells, stored = None, cols["error"]
            if shape is not None:
                cells, cols["error"] = _check(shape, cols["text"], cols["error"])
            good = cols["error"].null_count  # rows without an error
            if failures is not None and good < chunk.num_rows:
                _note(failures, row0, errors, stored, cols["error"])
            ok, failed, from_store = ok + good, failed + chunk.num_rows - good, from_store + _count(earlier)
            from_store_failed += _count(pc.and_(earlier, pc.is_valid(cols["error"])))
            out.write_columns(chunk, cols["text"], cols, cells)
        written = out.rows
    return Written(written, ok, failed, from_store, from_store_failed)


def write_so_far(job: Job, rows: Rows, path: Path) -> bool:
    """The rows so far, for a run that stopped, as Parquet at `path`: the answered ones with their
    answers, the others with the error that they have none yet. Sends nothing and takes no lock; False
    when there is nothing to write them from (no store) or the file cannot be written."""
    try:
        store = Store(job.state.path, readonly=True)
    except Exception:  # the store never came to be: nothing was answered
        return False
    try:
        write_output(rows, renderer_for(job), store, path=path, fmt="parquet",
                     text_column=job.output.text_column, response_format=job.task.response_format,
                     limit=None)
    except OSError:
        return False
    finally:
        store.close()
    return True


def _render(renderer: Renderer, chunk: pa.RecordBatch, row0: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    fps: list[str | None] = []
    errors: list[str | None] = []
    for group in renderer.groups(chunk, row0):
        fps += group.fingerprints
        errors += group.errors
    return pa.array(fps, pa.string()), pa.array(errors, pa.string()), pa.nulls(len(fps), ROW)


def _answers(store: Store, fps: pa.Array, errors: pa.Array, held: pa.StructArray,
             recall: RecallWriter | None) -> tuple[dict[str, pa.Array], pa.Array]:
    """Each row's answer columns, and which rows an earlier run's answer serves. `held`: the
    answers pass 1 found; only the other rows' (those sent this run) are looked up here. The rows
    and their answers go to `recall` for the next run."""
    sent = held.is_null()
    wanted = pc.filter(fps, sent).drop_null()
    found = struct_of(store.answer_rows(pc.unique(wanted).to_pylist()) if len(wanted) else [])
    at = pc.index_in(fps, value_set=found.field("fingerprint"))
    answers = pc.if_else(held.is_valid(), held, found.take(at)) if len(found) else held
    if recall is not None:
        recall.add(fps, answers)
    cols = {name: pc.struct_field(answers, name) for name in FIELDS}
    # A row that never became a request has its own message; one with no stored answer says so.
    unanswered = pc.and_(pc.and_(pc.is_null(at), sent), pc.is_null(errors))
    none = pa.scalar(None, pa.string())
    cols["error"] = pc.coalesce(errors, cols["error"], pc.if_else(unanswered, pa.scalar(NO_ANSWER), none))
    cols["attempts"] = cols["attempts"].fill_null(0)
    return cols, pc.not_equal(cols.pop("run"), store.run_id)


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _check(shape: structured.Shape, text: pa.Array,
           error: pa.Array) -> tuple[list[dict[str, object]], pa.Array]:
    """A structured answer's properties, and the rows whose answer does not fit the response format."""
    cells: list[dict[str, object]] = []
    problems = error.to_pylist()
    for i, (t, e) in enumerate(zip(text.to_pylist(), problems, strict=True)):
        cell: dict[str, object] = {}
        if e is None:
            cell, problem = structured.check(shape, t)
            problems[i] = problem or None
        cells.append(cell)
    return cells, pa.array(problems, pa.string())


def _note(failures: Failures, row0: int, invalid: pa.Array, stored: pa.Array, error: pa.Array) -> None:
    """The chunk's failed rows, each with its kind: an input row that never became a request, a row
    with no answer, an answer that does not fit the response format, or what the API said."""
    at = pc.indices_nonzero(pc.is_valid(error))
    for i, bad_row, before, now in zip(at.to_pylist(), invalid.take(at).to_pylist(),
                                       stored.take(at).to_pylist(), error.take(at).to_pylist(), strict=True):
        kind = ("invalid input row" if bad_row is not None else "no answer" if now == NO_ANSWER
                else "response format" if before is None else None)
        failures.add(row0 + i, now, kind=kind)
