"""The output file read back, for the Python door to hand its answers over in the caller's kind.

A Parquet output comes back as written. A CSV output (`output="answers.csv"`) comes back as the text it
holds, read as `source` reads any CSV file (an unquoted empty cell is null, a quoted one the empty
string), and the answer columns get their types again (`batch.fields`); the caller's own columns are
taken from the caller, not from this text, except when the input itself was a file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch import fields
from batch.job.paths import OUTPUT_EXTENSIONS
from batch.tables.source import Source

_TYPED = {f.name: f.arrow for f in fields.OUTPUT[1:]}  # the text column is text in any case


def read_output(path: Path) -> pa.Table:
    """The output file as one table, whatever its format."""
    if OUTPUT_EXTENSIONS.get(path.suffix.lower()) != "csv":
        return pq.read_table(path)
    source = Source(path, "csv")
    try:
        table = pa.Table.from_batches(list(source.chunks()), source.schema)
    finally:
        source.close()
    # An input column never has an answer column's name (preflight refuses the clash), so the names
    # say which columns were answers.
    return pa.table([column.cast(_TYPED[name]) if name in _TYPED else column
                     for name, column in zip(table.column_names, table.columns, strict=True)],
                    names=table.column_names)
