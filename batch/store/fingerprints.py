"""Each input row's fingerprint and stored answer, from pass 1 to pass 2, so that a run renders
every row once and searches the store for each answer once.

Pass 1 renders every row to find what to send, looking each fingerprint up in the store; pass 2
needs each row's fingerprint and answer again. Rather than render and search twice, pass 1 appends
each group's fingerprints (and, for a row that cannot become a request, why) and the answers the store
already held (`ROW`, null for a row sent this run: pass 2 looks those up) to a `spool` beside the
store; pass 2 reads them back in step with the input's chunks. About 40 bytes a row on disk, plus the
answers found; a chunk's worth in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch import fields
from batch.render.prompts import Group
from batch.tables.rechunk import Rechunker
from batch.tables.spool import Spool

# The stored fields the output shows, then the run that stored each, and the Arrow type each comes back
# from SQLite as (pass 2 takes its columns from these).
FIELDS: dict[str, pa.DataType] = {f.name: f.arrow for f in fields.STORED
                                  if f.output is not None or f.name == "run"}
# A stored answer row (`Store.ANSWER_ROW`: every stored field) as an Arrow struct (see `struct_of`).
ROW = pa.struct([(f.name, f.arrow) for f in fields.STORED])
SCHEMA = pa.schema([("fingerprint", pa.string()), ("error", pa.string()), ("answer", ROW)])
Recalled = tuple[pa.Array, pa.BooleanArray, pa.StructArray]  # `recall.Recall.match`'s


def struct_of(rows: Sequence[tuple[Any, ...] | None]) -> pa.StructArray:
    """Stored answer rows (`Store.ANSWER_ROW` tuples; None: no answer) as a `ROW` array. Without a
    None, a column at a time: pyarrow converts 100,000 rows in half the time it takes tuple by tuple."""
    if not rows or None in rows:
        return pa.array(rows, ROW)
    columns = zip(*rows, strict=True)  # no None here: every row has every field
    return pa.StructArray.from_arrays([pa.array(c, f.type) for c, f in zip(columns, ROW, strict=True)],
                                      fields=list(ROW))


class RowFingerprints:
    """Written by pass 1 (`add`, then `finish` once every row is in), read by pass 2 (`reader`)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._spool = Spool(SCHEMA, folder, instead="the output pass renders and looks up every row again")
        self.unchanged = False  # every row had the last run's request and answer (`recall`)

    @property
    def complete(self) -> bool:
        """Every row of the run's input is in (not so if the spool was dropped: a full disk)."""
        return self._spool.kept

    def add(self, group: Group, stored: Mapping[str, tuple[Any, ...]] | None = None,
            recalled: Recalled | None = None) -> None:
        """The group's rows; `stored`: the answers pass 1 found, by fingerprint (`Store.lookup`);
        `recalled`: the rows' fingerprints, which rows' answers `recall` had, and those answers."""
        if not self._spool.writing:
            return
        found = [None if fp is None else stored.get(fp) for fp in group.fingerprints] if stored else None
        answers = struct_of(found) if found else pa.nulls(len(group), ROW)
        fps = pa.array(group.fingerprints, pa.string()) if recalled is None else recalled[0]
        if recalled is not None and (hits := recalled[1].true_count):
            # Every row recalled (the usual re-run): the recalled answers as they are.
            answers = recalled[2] if hits == len(group) else pc.if_else(recalled[1], recalled[2], answers)
        self._spool.add(pa.record_batch([fps, pa.array(group.errors, pa.string()), answers], schema=SCHEMA))

    def finish(self) -> None:
        self._spool.finish()

    def reader(self) -> FingerprintReader:
        assert self.complete, "pass 1 did not see every row"
        return FingerprintReader(self._spool.chunks())

    def close(self) -> None:
        self._spool.close()


class FingerprintReader:
    """The rows' keys in order, `take(n)` at a time, whatever sizes the groups had."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._rows = Rechunker(batches, SCHEMA)

    def take(self, n: int) -> tuple[pa.StringArray, pa.StringArray, pa.StructArray]:
        """The next `n` rows' fingerprints (null where the row failed), failure messages, and the
        answers pass 1 found (null where it found none)."""
        fps, errors, answers = self._rows.take(n)
        assert len(fps) == n, "pass 1 kept fewer rows than the input has"
        return fps, errors, answers
