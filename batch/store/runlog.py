"""The runs a store has seen: each one's summary and the figures its report plots (kilobytes a run,
whatever the rows), kept in the same SQLite file for `status`, `report` and the report's history."""

from __future__ import annotations

from batch import fields
from batch.store.answers import RUN_TOKEN, Store


def last_summary(store: Store) -> str | None:
    row = store.db.execute("SELECT summary FROM runs WHERE summary IS NOT NULL "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def save_figures(store: Store, summary_json: str, figures_json: str) -> None:
    """What the run report plots (kilobytes, whatever the rows), for `report` to draw again; kept
    for this store's run, or if it began none (a store opened after a stopped run) the last one."""
    store.db.execute("INSERT OR REPLACE INTO run_figures SELECT COALESCE(NULLIF(?, 0), MAX(id)), ?, ? "
                     "FROM runs", (store.run_id, summary_json, figures_json))


def run_history(store: Store, n: int) -> list[tuple[int, float, str, str | None]]:
    """The last `n` runs that left a summary, newest first: (id, started, summary, figures).
    A stopped run's summary is in `run_figures` only; a store older than that table has none."""
    if not _has(store, "run_figures"):
        return [(r[0], r[1], r[2], None) for r in store.db.execute(
            "SELECT id, started, summary FROM runs WHERE summary IS NOT NULL ORDER BY id DESC LIMIT ?",
            (n,))]
    rows = store.db.execute(
        "SELECT r.id, r.started, COALESCE(f.summary, r.summary), f.figures FROM runs r "
        "LEFT JOIN run_figures f ON f.run = r.id WHERE COALESCE(f.summary, r.summary) IS NOT NULL "
        "ORDER BY r.id DESC LIMIT ?", (n,))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def bought_by(store: Store, token: str) -> dict[str, int]:
    """What the store's runs named `token` (`Store.begin_run`) received: `answers` that stand (a good
    one, or a failure that is not sent again), how many of them are `ok`, the `requests` they took,
    and their usage counts (`fields.SUMMED`). A read-only look also sees what a killed process left
    in the journal."""
    usage = "".join(f", SUM(COALESCE({name}, 0))" for name in fields.SUMMED)
    row = store.db.execute(
        f"SELECT SUM(error IS NULL OR permanent = 1), SUM(error IS NULL), SUM(attempts){usage} "
        f"FROM answers WHERE run IN (SELECT CAST(substr(key, {len(RUN_TOKEN) + 1}) AS INTEGER) FROM meta "
        "WHERE key LIKE ? AND value = ?)", (f"{RUN_TOKEN}%", token)).fetchone()
    counts = [int(v or 0) for v in row]
    return {"answers": counts[0], "ok": counts[1], "requests": counts[2],
            **dict(zip(fields.SUMMED, counts[3:], strict=True))}


def _has(store: Store, table: str) -> bool:
    return store.db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (table,)).fetchone() is not None
