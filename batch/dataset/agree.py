"""Partitions that must agree: the output of a partitioned input is read as one table
(`pd.read_parquet(folder)`), and a reader takes one part's schema for all of them. A column that is
int64 in one part and string in another then fails the whole read; a column only some parts have is
dropped or filled with nulls, depending on which part the reader happens to look at first. So every
partition must have the same columns (in any order) with the same Arrow types — a string is a string
whether its offsets are 32 or 64 bits (`large_string`, as pandas writes it): readers convert those —
and a run whose partitions differ is refused before anything is sent (exit 2), naming the columns and
the parts.

Every local partition is checked before the first request; of a remote dataset, the first is (with
the parts an earlier run wrote, from their done markers), and each later part is held against it when
its worker fetches it: one that differs stops only its part, which is never published, so the folder
that is written always reads as one table.
"""

from __future__ import annotations

from collections.abc import Sequence

from batch.errors import InputError
from batch.tables.source import Rows

Columns = tuple[tuple[str, str], ...]  # (name, Arrow type as text), in the part's order
Found = tuple[str, Columns]  # a part's name and its columns

SHOWN = 3  # parts named in a message per group; the rest are counted


def columns_of(rows: Rows) -> Columns:
    return tuple((f.name, str(f.type).replace("large_", "")) for f in rows.schema)


def from_json(value: object) -> Columns | None:
    """Columns as a done marker keeps them (JSON lists), or None for a marker without them."""
    if not isinstance(value, list):
        return None
    return tuple((str(name), str(kind)) for name, kind in value)


def disagreements(found: Sequence[Found]) -> list[str]:
    """Each column on which the parts differ: its types, and the parts that lack it."""
    names = list(dict.fromkeys(name for _, cols in found for name, _ in cols))
    problems = []
    for name in names:
        kinds: dict[str, list[str]] = {}
        lacking = []
        for part, cols in found:
            kind = dict(cols).get(name)
            if kind is None:
                lacking.append(part)
            else:
                kinds.setdefault(kind, []).append(part)
        if len(kinds) > 1:
            problems.append(f"Column {name!r} is " + ", ".join(f"{kind} in {_some(parts)}"
                                                               for kind, parts in kinds.items()) + ".")
        if lacking:
            having = [p for parts in kinds.values() for p in parts]
            problems.append(f"Column {name!r} is in {_some(having)} but not in {_some(lacking)}.")
    return problems


def check_agree(found: Sequence[Found], dataset: str) -> None:
    """Refuse (InputError, exit 2) partitions that do not have the same columns of the same types."""
    problems = disagreements(found)
    if problems:
        raise InputError(f"[input] path: the partitions of {dataset} do not agree, so their output could "
                         f"not be read as one table. {' '.join(problems)} Give every partition the same "
                         "columns with the same types (or run the odd ones as a job of their own).")


def check_part(expect: Found | None, found: Found, dataset: str) -> None:
    """A part fetched on a worker, held against the one checked before the run (a remote dataset)."""
    if expect is not None and expect[0] != found[0]:
        check_agree([expect, found], dataset)


def part_name(location: str, dataset: str) -> str:
    """How messages name a partition: its path within the dataset (a glob's: its file name)."""
    root = dataset.rstrip("/") + "/"
    return location[len(root):] if location.startswith(root) else location.rsplit("/", 1)[-1]


def _some(parts: Sequence[str]) -> str:
    """a, b and c; a, b, c and 2 more."""
    if len(parts) > SHOWN:
        return f"{', '.join(parts[:SHOWN])} and {len(parts) - SHOWN} more"
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
