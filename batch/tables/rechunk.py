"""Chunks of whatever sizes, read back `n` rows at a time: one stream's rows cut to another's chunks.

Pass 1 keeps its rows in the sizes of its groups, and the last run's rows (`store.recall`) came in the
sizes of that run's chunks; their readers want them in step with this run's chunks or groups. What
was read past the last `take` is held (a chunk at most) for the next one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa


class Rechunker:
    """`take(n)`: the next `n` rows of `chunks`, whatever sizes they come in."""

    def __init__(self, chunks: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
        self._chunks, self._schema = chunks, schema
        self._held: list[pa.RecordBatch] = []
        self._count = 0

    def take(self, n: int) -> list[pa.Array]:
        """The next `n` rows, one array a column; fewer once the chunks have run out."""
        while self._count < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._held.append(chunk)
            self._count += chunk.num_rows
        table = pa.Table.from_batches(self._held, self._schema)
        head, rest = table.slice(0, n), table.slice(n)
        self._held, self._count = rest.to_batches(), rest.num_rows
        return [column.combine_chunks() for column in head.columns]
