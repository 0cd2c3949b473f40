"""Pass 2: every input row once, in input order, with its answer from the store, into the output file.

    rows ─► prompts (fingerprints) ─► store.get_many ─► sink (temporary file, renamed into place)

A structured answer is checked against the job's response format when it arrives (`structured.judge`)
and again here, so an answer an earlier version stored as good but that fits no column (an integer
beyond int64) fails its row, with its raw text, instead of breaking the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import structured
from .prompts import Renderer, RowFailure
from .records import Request
from .sink import Outcome, OutputWriter
from .source import Rows
from .store import Store
from .timeline import Failures


@dataclass(frozen=True)
class Written:
    rows: int
    ok: int
    failed: int
    from_store: int  # answers an earlier run paid for


def write_output(rows: Rows, renderer: Renderer, store: Store, *, path: Path, fmt: str, text_column: str,
                 response_format: Mapping[str, Any] | None, limit: int | None,
                 failures: Failures | None = None) -> Written:
    """`failures`, when given, collects the failed rows (the first few, and their kinds) for the report."""
    ok = failed = from_store = 0
    failures = failures or Failures()
    shape = structured.shape_of(response_format)
    with OutputWriter(path, fmt, rows.schema, text_column, shape) as out:
        for row0, chunk in rows.numbered(limit):
            rendered = renderer.render_chunk(chunk, row0)
            answers = store.get_many(r.fingerprint for r in rendered if isinstance(r, Request))
            outcomes: list[Outcome] = []
            cells: list[dict[str, object]] = []
            for i, r in enumerate(rendered):
                cells.append({})
                if isinstance(r, RowFailure):
                    outcomes.append(r.error)
                    failed += 1
                    failures.add(row0 + i, r.error, kind="invalid input row")
                    continue
                found = answers.get(r.fingerprint)
                if found is None:  # cannot happen after a complete pass 1; never drop the row
                    outcomes.append("no answer was recorded for this row; run the job again")
                    failed += 1
                    failures.add(row0 + i, "no answer was recorded for this row", kind="no answer")
                    continue
                answer, earlier = found
                problem = None
                if shape is not None and answer.ok:
                    cells[-1], problem = structured.check(shape, answer.text)
                    if problem:
                        answer = replace(answer, error=problem)
                outcomes.append(answer)
                ok += answer.ok
                failed += not answer.ok
                from_store += earlier
                if answer.error is not None:
                    failures.add(row0 + i, answer.error, permanent=answer.permanent,
                                 kind="response format" if problem else None)
            out.write(chunk, outcomes, cells)
        written = out.rows
    return Written(written, ok, failed, from_store)
