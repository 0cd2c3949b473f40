"""The Batch API's pack lines: which rows a line carries when it is a pack (`[task] rows-per-request`).

A pack goes to the Batch API as one JSONL line whose custom id is the pack's; its rows are answered
under their own fingerprints only when its result is merged, perhaps by a later run. So the rows of
each pack line are written beside the ledger's lines (in the same store, table `upload_packs`, made by
`migrations`) before the file is uploaded: each row's fingerprint, its id in the pack, its item's
estimated tokens, and the pack's shared tokens and kind of answer, which is all that taking the
result apart needs (`render.packs.Pack.outcome`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from batch.store import migrations
from batch.store.answers import Store


@dataclass(frozen=True, slots=True)
class PackLine:
    """The rows of one pack line: (fingerprint, id in the pack, item tokens) each, in pack order."""

    shared: int
    text_job: bool
    rows: tuple[tuple[str, str, int], ...]


class PackLines:
    def __init__(self, store: Store) -> None:
        self._db, self._store = store.db, store

    def record(self, upload: int, lines: Mapping[str, PackLine]) -> None:
        """The pack lines of an upload, written before its file leaves (one transaction)."""
        if not lines:
            return
        with self._store.writing():
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO upload_packs VALUES (?, ?, ?, ?, ?, ?, ?)", (
                (upload, custom_id, fp, item, tokens, line.shared, int(line.text_job))
                for custom_id, line in lines.items() for fp, item, tokens in line.rows))
            self._db.execute("COMMIT")

    def of(self, upload: int) -> dict[str, PackLine]:
        """An upload's pack lines, by custom id."""
        if not self._exists():
            return {}
        found: dict[str, tuple[int, bool, list[tuple[str, str, int]]]] = {}
        for custom_id, fp, item, tokens, shared, text_job in self._db.execute(
                "SELECT custom_id, member, item, tokens, shared, text_job FROM upload_packs WHERE upload=? "
                "ORDER BY custom_id, CAST(item AS INTEGER), item", (upload,)):
            found.setdefault(custom_id, (shared, bool(text_job), []))[2].append((fp, item, tokens))
        return {k: PackLine(shared, text_job, tuple(rows)) for k, (shared, text_job, rows) in found.items()}

    def _exists(self) -> bool:
        return bool(migrations.columns(self._db, "upload_packs"))
