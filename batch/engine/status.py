"""`python -m batch status`: where a job stands, from its input and its store. Sends nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from batch.engine.preflight import check_job
from batch.job.config import Job
from batch.render.prompts import renderer_for
from batch.store import runlog
from batch.store.answers import Store
from batch.store.database import size_bytes
from batch.store.ledger import Ledger


def status(job: Job) -> dict[str, object]:
    """Where a job stands, from its input and its store; sends nothing and takes no lock."""
    source = check_job(job)
    renderer = renderer_for(job)
    counts = {"rows": 0, "answered": 0, "failed_permanent": 0, "failed_retryable": 0, "pending": 0,
              "invalid_rows": 0, "in_batches": 0}
    if not job.state.path.exists():
        counts.update(rows=source.num_rows, pending=source.num_rows)
        return {**counts, "state": str(job.state.path), "state_bytes": 0, "last_run": None, "batches": []}
    store = Store(job.state.path, readonly=True)
    try:
        for row0, chunk in source.numbered(None):
            for group in renderer.groups(chunk, row0):  # never a whole chunk of images at once
                fps = [fp for fp in group.fingerprints if fp is not None]
                answers = store.get_many(fps)
                held = Ledger(store).held(fps)
                for fp in group.fingerprints:
                    counts["rows"] += 1
                    found = answers.get(fp) if fp is not None else None
                    if fp is None:
                        counts["invalid_rows"] += 1
                    elif found is None:
                        counts["pending"] += 1
                        counts["in_batches"] += fp in held  # pending, and already paid for
                    elif found[0].ok:
                        counts["answered"] += 1
                    else:
                        counts["failed_permanent" if found[0].permanent else "failed_retryable"] += 1
        last = runlog.last_summary(store)
        return {**counts, "state": str(job.state.path), "state_bytes": size_bytes(store.path),
                "last_run": json.loads(last) if last else None, "batches": _batches(store)}
    finally:
        store.close()


def _batches(store: Store) -> list[dict[str, object]]:
    """The job's Batch API submissions, oldest first: what Groq last said of each."""
    return [{"batch_id": u.batch_id, "file_id": u.file_id, "file": u.name, "lines": u.lines,
             "status": u.status, "counts": json.loads(u.counts) if u.counts else None,
             "merged": u.done,
             "prepared": datetime.fromtimestamp(u.created, UTC).isoformat(timespec="seconds")}
            for u in Ledger(store).uploads()]
