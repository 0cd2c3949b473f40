"""The Batch API's ledger: which submissions a job made and which request is on which line.

It lives in the job's store (the same SQLite file, two tables of its own, made by `migrations`), so
one file holds everything a run needs to resume. Each step is committed the moment it happens
(autocommit), before the next one is attempted: a crash then leaves at worst one uploaded file or one
submitted batch the ledger does not name, and `submit` finds those by name and input file on Groq
instead of paying twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch.store import migrations
from batch.store.answers import Store

_COLUMNS = "id, name, lines, bytes, file_id, batch_id, status, counts, detail, created, done"
_NAMES = _COLUMNS.split(", ")
_UPDATABLE = frozenset(("file_id", "batch_id", "status", "counts", "detail", "done"))
_STAMPED = frozenset(("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                      "cancelled"))  # Groq's batch object has `<status>_at` for these
_CHUNK = 500  # fingerprints per IN (...) query; well under SQLite's variable limit


@dataclass(frozen=True, slots=True)
class Upload:
    """One Batch API submission, as far as it got: a local file of `lines` requests (`prepared`), then
    Groq's file id (`uploaded`), then its batch id and the batch's last known status and counts."""

    id: int
    name: str  # the file name it is uploaded under, unique to this store
    lines: int
    bytes: int
    file_id: str | None
    batch_id: str | None
    status: str
    counts: str | None  # Groq's request_counts, as JSON
    detail: str | None  # Groq's errors, or why it was given up
    created: float
    done: bool  # its results are in the answers (or it was given up): it holds no request any more


class Ledger:
    """The submissions recorded in one store (its tables are the store's, see `migrations`). A
    read-only look at a store from before the Batch API mode finds no ledger tables: it then simply
    holds no submission."""

    def __init__(self, store: Store) -> None:
        self._db, self._store = store.db, store

    def add(self, prefix: str, digest: str, fingerprints: list[str], size: int) -> Upload:
        """Record a prepared file of requests (line i+1 holds fingerprints[i]) under a name that no other
        upload of this store has, even one of the same content: `<prefix>-<id>-<digest>.jsonl`."""
        now = time.time()
        with self._store.writing():  # a full disk: rolled back, a clean stop (exit 3)
            self._db.execute("BEGIN")
            cur = self._db.execute("INSERT INTO uploads (name, lines, bytes, status, created, updated) "
                                   "VALUES ('', ?, ?, 'prepared', ?, ?)", (len(fingerprints), size, now, now))
            upload = int(cur.lastrowid or 0)
            name = f"{prefix}-{upload}-{digest}.jsonl"
            self._db.execute("UPDATE uploads SET name=? WHERE id=?", (name, upload))
            self._db.executemany("INSERT INTO upload_lines VALUES (?, ?, ?)",
                                 ((upload, i + 1, fp) for i, fp in enumerate(fingerprints)))
            self._db.execute("COMMIT")
        return Upload(upload, name, len(fingerprints), size, None, None, "prepared", None, None, now, False)

    def update(self, upload: int, *, batch: Mapping[str, Any] | None = None, **values: object) -> None:
        """Set fields. A status seen for the first time (and the merge) is stamped in `times`, for the
        run report's timeline of each batch; the `<status>_at` times of Groq's `batch` object replace
        those (they are exact, where polling sees a status late or not at all)."""
        assert set(values) <= _UPDATABLE, values
        sets = ", ".join(f"{k}=?" for k in values)
        now = time.time()
        seen = [(s, now) for s in (values.get("status"), "merged" if values.get("done") else None) if s]
        groq = [(k[:-3], float(v)) for k, v in (batch or {}).items()
                if k.endswith("_at") and k[:-3] in _STAMPED and isinstance(v, int | float) and v > 0]
        if seen or groq:  # json_set(times, path, value, ...), applied left to right
            pairs = ["'$.' || ?, COALESCE(json_extract(times, '$.' || ?), ?)"] * len(seen)
            pairs += ["'$.' || ?, ?"] * len(groq)
            sets += f", times=json_set(COALESCE(times, '{{}}'), {', '.join(pairs)})"
        params = [p for name, at in seen for p in (name, name, at)]
        params += [p for name, at in groq for p in (name, at)]
        with self._store.writing():
            self._db.execute(f"UPDATE uploads SET {sets}, updated=? WHERE id=?",
                             (*values.values(), *params, now, upload))

    def timelines(self) -> list[dict[str, Any]]:
        """Each submission, oldest first: name, batch id, status, lines, counts (JSON) and when each
        status was first seen (`times`: status -> epoch seconds; `prepared` is when it was written)."""
        if not self._exists():
            return []
        times = "times" if "times" in self._columns() else "NULL"  # a read-only look at an older store
        rows = self._db.execute(f"SELECT name, batch_id, status, lines, counts, created, {times} "
                                "FROM uploads ORDER BY id")
        return [{"name": r[0], "batch_id": r[1], "status": r[2], "lines": r[3], "counts": r[4],
                 "times": {"prepared": r[5], **(json.loads(r[6]) if r[6] else {})}} for r in rows]

    def uploads(self, *, open_only: bool = False) -> list[Upload]:
        if not self._exists():
            return []
        where = " WHERE done = 0" if open_only else ""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM uploads{where} ORDER BY id")
        return [Upload(**{**dict(zip(_NAMES, r, strict=True)), "done": bool(r[-1])}) for r in rows]

    def lines(self, upload: int) -> dict[int, str]:
        """Line number (1-based) -> fingerprint, for one upload."""
        rows = self._db.execute("SELECT line, fingerprint FROM upload_lines WHERE upload=?", (upload,))
        return dict(rows.fetchall())

    def fingerprints(self, upload: int) -> set[str]:
        """The fingerprints on an upload's lines (a set built row by row, with no list of pairs first)."""
        return {fp for (fp,) in self._db.execute("SELECT fingerprint FROM upload_lines WHERE upload=?",
                                                  (upload,))}

    def held(self, fingerprints: Iterable[str]) -> set[str]:
        """Those of `fingerprints` that a batch not yet merged holds, on a line of their own or in a pack
        line's rows (`packlines`): sending them again would pay twice."""
        todo, found = list(set(fingerprints)), set[str]()
        if not self._exists():
            return found
        held = [("upload_lines", "fingerprint")]
        if migrations.columns(self._db, "upload_packs"):  # a read-only look at an older store has none
            held.append(("upload_packs", "member"))
        for i in range(0, len(todo), _CHUNK):
            chunk = todo[i:i + _CHUNK]
            for table, column in held:
                q = (f"SELECT l.{column} FROM {table} l JOIN uploads u ON u.id = l.upload "
                     f"WHERE u.done = 0 AND l.{column} IN ({','.join('?' * len(chunk))})")
                found.update(r[0] for r in self._db.execute(q, chunk))
        return found

    def _columns(self) -> set[str]:
        return migrations.columns(self._db, "uploads")

    def _exists(self) -> bool:
        return bool(self._columns())
