"""A batch Groq failed at validation: its line errors become the rows' permanent errors.

Groq names the lines it refuses; each is this run's failure (a pack's line: its rows go again in
smaller packs, or a row alone fails), and the batch's other lines need a new batch. A batch failed
with no line named is refused as a whole: the run says why and ends.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from batch.batchapi.packed import PackedBatch
from batch.records import Answer
from batch.store.answers import Store
from batch.store.ledger import Ledger, Upload

log = logging.getLogger("batch")


def refused(u: Upload, obj: dict[str, Any], left: set[str], wholly: list[str], *, ledger: Ledger,
            store: Store, packed: PackedBatch | None) -> bool:
    """True when lines were blamed (the others need submitting again); else the batch is added to
    `wholly`, the batches refused as a whole, with Groq's reasons."""
    lines = ledger.lines(u.id)
    errors = (obj.get("errors") or {}).get("data") or []
    ledger.update(u.id, detail=json.dumps(errors)[:20000])
    blamed = 0
    for e in errors:
        number, message = e.get("line"), e.get("message") or e.get("code") or "rejected"
        fp = lines.get(number) if isinstance(number, int) else None
        log.error("batch: %s failed validation: line %s: %s", u.batch_id, number if fp else "-", message)
        if fp is not None and fp in left:
            failed = Answer.failure(fp, f"the Batch API refused this request: {message}", permanent=True,
                                    attempts=1)
            pack = packed.lines(u.id).get(fp) if packed else None
            store.put_many(packed.split(pack, failed) if packed and pack else [failed])
            left.discard(fp)
            blamed += 1
    if not blamed:
        reasons = "; ".join(str(e.get("message") or e.get("code")) for e in errors) or "no reason given"
        wholly.append(f"{u.batch_id} ({u.name}): {reasons}")
        return False
    return True
