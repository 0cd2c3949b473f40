"""`python -m batch cancel`: stop a job's Batch API batches, and settle what a killed run left half-done."""

from __future__ import annotations

import contextlib
from pathlib import Path

from batch.batchapi.endpoints import BatchApi
from batch.batchapi.files import upload_folder
from batch.batchapi.submit import Submitter
from batch.errors import ApiError
from batch.report.summary import RunStats
from batch.store.answers import Store
from batch.store.database import StoreError
from batch.store.ledger import Ledger, Upload


async def cancel(client: BatchApi, state: Path) -> list[tuple[str, str]]:
    """Cancel this store's batches that are not merged yet: (batch id or file name, what happened).

    A submitted batch is cancelled at Groq, and the store only read (a run waiting on it may hold the
    lock): the next run sees the cancellation and merges what was answered. A submission that never
    became a batch (a run died between the steps) is settled here, under the store's lock: a batch Groq
    has of its file after all is recorded and cancelled; otherwise the uploaded file is deleted and the
    submission given up, so its requests are pending again (and an online run may send them).
    """
    if not state.exists():
        return []
    store = Store(state, readonly=True)
    try:
        pending = Ledger(store).uploads(open_only=True)
    finally:
        store.close()
    done = [(u.batch_id, await _cancel_one(client, u.batch_id)) for u in pending if u.batch_id is not None]
    loose = [u for u in pending if u.batch_id is None]
    return done + (await _settle(client, state, loose) if loose else [])


async def _cancel_one(client: BatchApi, batch_id: str) -> str:
    try:
        return str((await client.cancel_batch(batch_id)).get("status"))
    except ApiError as exc:
        return f"not cancelled: {exc}"


async def _settle(client: BatchApi, state: Path, loose: list[Upload]) -> list[tuple[str, str]]:
    try:
        store = Store(state)
    except StoreError:
        return [(u.name, "not cancelled: a run of this job is using it now (it will submit it)")
                for u in loose]
    folder = upload_folder(state)
    steps = Submitter(client, store, RunStats(), window="24h", job_name="", folder=folder)
    done: list[tuple[str, str]] = []
    try:
        for u in loose:
            file_id = u.file_id or await steps.file_named(u.name)
            batch = await steps.batch_of(file_id) if file_id else None
            if batch is not None:
                Ledger(store).update(u.id, file_id=file_id, batch_id=str(batch["id"]), status="submitted")
                done.append((str(batch["id"]), await _cancel_one(client, str(batch["id"]))))
                continue
            if file_id:
                with contextlib.suppress(ApiError):
                    await client.delete_file(file_id)
            steps.give_up(u, "cancelled before it became a batch; its requests are pending again")
            (folder / u.name).unlink(missing_ok=True)
            done.append((u.name, "given up before it became a batch; its requests are pending again"))
    finally:
        store.close()
    return done
