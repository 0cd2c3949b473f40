"""The answer's fields, each written once: its name, Python type, SQLite type and Arrow type, and where
it shows. Everything that spells the answer's columns derives from `FIELDS`:

    FIELDS ─┬─► RECORD   records.Answer's attributes, in order (checked here, at import)
            ├─► STORED   the store's answers table and journal (store.migrations, store.journal)
            │            and each row's stored answer as Arrow (store.fingerprints, store.recall)
            ├─► OUTPUT   the output's answer columns, in order (job.config, tables.sink)
            └─► SUMMED   the counts the run report adds up (report.summary, dataset.summary)

Adding a usage column is one `Field` here (with `since`: the next store migration, which
`store.migrations` then makes: ALTER TABLE answers ADD COLUMN), one attribute of `records.Answer`
(mypy reads the class, not this table) and its producer (`send.responses`). A field's `since` and
SQLite type never change once a store has been written with them: a store's migration is history.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from dataclasses import fields as attributes

import pyarrow as pa

from batch.records import Answer


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the same in the record, the store, the Arrow row and the output
    python: object  # the type of `records.Answer`'s attribute (of the stored value, when not a record one)
    sqlite: str  # the answers table's column type, with its constraint
    arrow: pa.DataType  # as the store's rows come back, in the recall file and in the output
    output: int | None = None  # position among the output's answer columns; 0 is the text column,
    #                            written under the job's `[output] text-column`; None: not in the output
    since: int = 1  # the store migration that adds the column (1: the first answers table)
    record: bool = True  # an attribute of `records.Answer`; False: the store's own (`run`)
    summed: bool = False  # a count the run report adds up over the run's answers
    doc: str = ""


_STR, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()

# In the record's order (`records.Answer`, then the store's own): the answers table's columns, the
# journal's and the recall file's rows are in this order, and a store row builds an Answer by position.
FIELDS: tuple[Field, ...] = (
    Field("fingerprint", str, "TEXT PRIMARY KEY", _STR, doc="hash of the exact request"),
    Field("text", str | None, "TEXT", _STR, output=0, doc="the answer; null when the row failed"),
    Field("input_tokens", int | None, "INTEGER", _INT, output=1, summed=True, doc="usage.prompt_tokens"),
    Field("output_tokens", int | None, "INTEGER", _INT, output=2, summed=True,
          doc="usage.completion_tokens"),
    Field("total_tokens", int | None, "INTEGER", _INT, output=3, doc="usage.total_tokens"),
    Field("reasoning_tokens", int | None, "INTEGER", _INT, output=4, summed=True,
          doc="usage.completion_tokens_details.reasoning_tokens"),
    Field("cached_tokens", int | None, "INTEGER", _INT, output=5, summed=True,
          doc="usage.prompt_tokens_details.cached_tokens"),
    Field("finish_reason", str | None, "TEXT", _STR, output=6, doc="stop, length, ..."),
    Field("request_id", str | None, "TEXT", _STR, output=10, doc="Groq's request id (req_...)"),
    Field("model", str | None, "TEXT", _STR, output=11, doc="the model that answered"),
    Field("latency_s", float | None, "REAL", _FLOAT, output=9, doc="seconds of the successful attempt"),
    Field("queue_time", float | None, "REAL", _FLOAT, output=12, doc="usage.queue_time, seconds"),
    Field("total_time", float | None, "REAL", _FLOAT, output=13, doc="usage.total_time, seconds"),
    Field("reasoning", str | None, "TEXT", _STR, output=14, since=2, doc="message.reasoning"),
    Field("attempts", int, "INTEGER NOT NULL", _INT, output=8, doc="requests made for the answer"),
    Field("error", str | None, "TEXT", _STR, output=7, doc="why the row failed; null when it succeeded"),
    # 0/1 in SQLite and Arrow; the store hands the record a bool.
    Field("permanent", bool, "INTEGER NOT NULL", _INT, doc="re-sending the same request cannot help"),
    Field("rows_in_request", int | None, "INTEGER", _INT, output=15, since=8,
          doc="rows that shared the answering request (rows-per-request packs them)"),
    Field("run", int, "INTEGER NOT NULL", _INT, record=False, doc="the store's run that received it"),
)

RECORD: tuple[Field, ...] = tuple(f for f in FIELDS if f.record)
# The record's fields first: a stored row's leading values are an Answer's, by position.
STORED: tuple[Field, ...] = (*RECORD, *(f for f in FIELDS if not f.record))
OUTPUT: tuple[Field, ...] = tuple(sorted((f for f in FIELDS if f.output is not None),
                                         key=lambda f: f.output or 0))
TEXT = OUTPUT[0]  # its column is named by the job
ANSWER_COLUMNS: tuple[str, ...] = tuple(f.name for f in OUTPUT[1:])  # after the text column, in order
SUMMED: tuple[str, ...] = tuple(f.name for f in FIELDS if f.summed)


def problems(table: tuple[Field, ...] = FIELDS, record: type = Answer) -> list[str]:
    """What makes a table unusable: a record that disagrees with it (a stored row would fill the wrong
    attributes), output positions with a gap or a repeat, a later column SQLite cannot add."""
    found = []
    mine = [(f.name, f.python) for f in table if f.record]
    hints = typing.get_type_hints(record)
    theirs = [(a.name, hints[a.name]) for a in attributes(record)]
    if mine != theirs:
        found.append(f"{record.__name__}'s attributes {theirs} are not the table's record fields {mine}")
    positions = sorted(f.output for f in table if f.output is not None)
    if positions != list(range(len(positions))):
        found.append(f"output positions must be 0..{len(positions) - 1}, each once: {positions}")
    for f in table:
        # ALTER TABLE ... ADD COLUMN refuses NOT NULL without a default (the rows already there).
        if f.since > 1 and "NOT NULL" in f.sqlite.upper() and "DEFAULT" not in f.sqlite.upper():
            found.append(f"{f.name}: a column added later (since {f.since}) needs a DEFAULT to be NOT NULL")
    if len({f.name for f in table}) != len(table):
        found.append("a field name is listed twice")
    return found


# Checked once, at import: a table that disagrees with the record would misplace values silently.
if _problems := problems():
    raise TypeError("batch.fields: " + "; ".join(_problems))
