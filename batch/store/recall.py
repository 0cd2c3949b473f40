"""The answers of the last complete run in row order (`<state>.recall`), so that a re-run over a table
that has not changed takes each row's answer from there instead of searching the store for it.

A nightly re-run over a big table finds most rows answered, and searching the store for each one is
a random B-tree probe per row: at a million rows, most of the run. So pass 2 writes, beside the
state, each row's fingerprint and stored answer in input order (`RecallWriter`), and the next run's
pass 1 reads them back in step with its rows (`Recall.match`): where a row's request is the same as
the one on the same line last time, its answer is the recalled one; only the other rows are looked up.

Only good answers are recalled (a failed one may be sent again), and a good answer is never replaced
in the store: a row is sent only when it has no answer, or a failed one. The file names the store it
was written from (`identity` in the store's meta table), so a state deleted and started over does not
take an old run's answers. It is written aside and renamed into place whole, and whatever is wrong with
it (missing, another store's, unreadable) only means the rows are looked up, as without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch import fields
from batch.store.answers import Store
from batch.store.fingerprints import ROW
from batch.tables.rechunk import Rechunker

log = logging.getLogger("batch")
SCHEMA = pa.schema([("fingerprint", pa.string()), ("answer", ROW)])


def _older(schema: pa.Schema) -> bool:
    """Whether a recall file of this schema is this version's, or an earlier one's: the same rows
    less fields a later store migration added (which it then holds as nulls)."""
    if schema == SCHEMA:
        return True
    if schema.names != SCHEMA.names or not pa.types.is_struct(schema.field("answer").type):
        return False
    theirs = {f.name: f.type for f in schema.field("answer").type}
    return all(theirs.get(f.name, f.arrow if f.since > 1 else None) == f.arrow for f in fields.STORED)


def _widened(chunk: pa.RecordBatch) -> pa.RecordBatch:
    """An earlier version's chunk in this version's rows: the fields it lacks, null."""
    old = chunk.column(1)
    have = {f.name for f in old.type}
    parts = [old.field(f.name) if f.name in have else pa.nulls(len(old), f.arrow) for f in fields.STORED]
    answer = pa.StructArray.from_arrays(parts, fields=list(ROW), mask=old.is_null())
    return pa.record_batch([chunk.column(0), answer], schema=SCHEMA)


def unrecalled(fingerprints: list[str | None], hit: pa.BooleanArray) -> list[str | None]:
    """The fingerprints with the recalled rows' blanked: answered, those need no search."""
    if not hit.true_count:
        return fingerprints
    return [None if h else fp for fp, h in zip(fingerprints, hit.to_pylist(), strict=True)]


def recall_path(store: Store) -> Path:
    return Path(f"{store.path}.recall")


def identity(store: Store) -> bytes:
    return store.meta("identity", secrets.token_hex(16)).encode()


class Recall:
    """The last run's rows, read in step with this run's groups (`match`)."""

    def __init__(self, store: Store) -> None:
        self._path = recall_path(store)
        self.unchanged = True  # every row so far had last time's request, and a good answer
        self._reader: pa.ipc.RecordBatchStreamReader | None = None
        self._widen = False  # the file is an earlier version's: its rows lack fields added since
        self._rows = Rechunker(self._chunks(), SCHEMA)
        try:
            reader = pa.ipc.open_stream(pa.OSFile(str(self._path)))
        except (OSError, pa.ArrowInvalid):
            self.unchanged = False
            return
        meta = reader.schema.metadata or {}
        if meta.get(b"store") == identity(store) and _older(reader.schema.remove_metadata()):
            self._reader = reader
            self._widen = reader.schema.remove_metadata() != SCHEMA
        else:
            self.unchanged = False

    def match(self, fingerprints: list[str | None]) -> tuple[pa.Array, pa.BooleanArray, pa.StructArray]:
        """The next rows' fingerprints as an array, which of them have last time's request and a good
        answer (never null), and those answers (null elsewhere)."""
        fps = pa.array(fingerprints, pa.string())
        last_fps, answers = self._take(len(fingerprints))
        hit = pc.fill_null(pc.and_(pc.equal(fps, last_fps), answers.is_valid()), False)
        if self.unchanged and hit.true_count < len(fps):
            self.unchanged = False
        return fps, hit, answers

    def _take(self, n: int) -> tuple[pa.Array, pa.StructArray]:
        fps, answers = self._rows.take(n)
        if len(fps) < n:  # this run has more rows than the last one
            fps = pa.concat_arrays([fps, pa.nulls(n - len(fps), pa.string())])
            answers = pa.concat_arrays([answers, pa.nulls(n - len(answers), ROW)])
        return fps, answers

    def _chunks(self) -> Iterator[pa.RecordBatch]:
        """The file's chunks, up to its end, the first damage, or `close`, whichever comes first."""
        while self._reader is not None:
            try:
                chunk = self._reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowInvalid) as exc:  # damaged on disk: look the rest up
                log.info("could not read %s further (%s); the rest is looked up", self._path, exc)
                return
            yield _widened(chunk) if self._widen else chunk

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class RecallWriter:
    """Pass 2's rows (`add`), then `commit` (renamed into place) or `discard`."""

    def __init__(self, store: Store) -> None:
        self._path = recall_path(store)
        # Unique per writer: two runs of one process (the Python API) may share a store.
        self._tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        try:
            # LZ4: a tenth of the answers' size on disk for a few percent of pass 2's time.
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            schema = SCHEMA.with_metadata({b"store": identity(store)})
            self._writer = pa.ipc.new_stream(str(self._tmp), schema, options=options)
        except OSError as exc:
            self._give_up(exc)

    def add(self, fps: pa.Array, answers: pa.StructArray) -> None:
        """Rows in input order; only answers without an error are kept."""
        if self._writer is None:
            return
        good: Any = pc.and_(answers.is_valid(), pc.is_null(pc.struct_field(answers, "error")))
        kept = pc.if_else(pc.fill_null(good, False), answers, pa.nulls(len(answers), ROW))
        try:
            self._writer.write_batch(pa.record_batch([fps, kept], schema=SCHEMA))
        except OSError as exc:
            self._give_up(exc)

    def commit(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            self._writer = None
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # a file renamed into place before its data is on disk could come back empty
            finally:
                os.close(fd)
            os.replace(self._tmp, self._path)
        except OSError as exc:
            self._give_up(exc)

    def discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def _give_up(self, exc: OSError) -> None:
        log.info("could not write %s (%s); the next run looks every row up in the state", self._path, exc)
        self.discard()
