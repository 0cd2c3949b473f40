"""Chunks of any sizes read back `n` rows at a time (`tables.rechunk`): every row once, in order, cut
where the reader asks, and fewer rows (never an error) once the chunks run out."""

from __future__ import annotations

import pyarrow as pa

from batch.tables.rechunk import Rechunker

SCHEMA = pa.schema([("n", pa.int64()), ("s", pa.string())])


def chunks(*sizes: int) -> list[pa.RecordBatch]:
    out, at = [], 0
    for size in sizes:
        values = list(range(at, at + size))
        out.append(pa.record_batch([pa.array(values, pa.int64()), pa.array([str(v) for v in values])],
                                   schema=SCHEMA))
        at += size
    return out


def test_rows_come_back_in_order_cut_where_asked() -> None:
    rows = Rechunker(iter(chunks(3, 0, 5, 1, 4)), SCHEMA)
    taken = [rows.take(n) for n in (2, 4, 0, 7)]
    assert [len(n) for n, _ in taken] == [2, 4, 0, 7]
    assert [v for n, _ in taken for v in n.to_pylist()] == list(range(13))
    assert taken[1][1].to_pylist() == ["2", "3", "4", "5"]
    assert all(isinstance(col, pa.Array) for cols in taken for col in cols)  # one array, not chunks


def test_fewer_rows_once_the_chunks_run_out() -> None:
    rows = Rechunker(iter(chunks(2, 2)), SCHEMA)
    assert rows.take(3)[0].to_pylist() == [0, 1, 2]
    assert rows.take(5)[0].to_pylist() == [3]
    assert rows.take(2)[0].to_pylist() == []
    assert Rechunker(iter([]), SCHEMA).take(4)[1].type == pa.string()
