"""The steps that take one Batch API submission from a local file to a submitted batch, never twice.

    prepared  (local file, no file id)  -> find the file on Groq by its unique name: reuse it, else upload
    uploaded  (file id, no batch id)    -> find a batch of that file on Groq: attach to it, else submit

Each step's result goes into the store the moment Groq returns it, before the next step is tried. A
step retried after a failure that may have reached Groq (a timeout, a dropped connection), or continued
from an earlier run, first asks Groq what exists: a file uploaded under the same name (its duplicates
are deleted), a batch of the same input file. A step Groq refuses (a 400) gives its requests back:
the submission is abandoned, so they are pending again, and the run ends with Groq's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from batch.batchapi.endpoints import BatchApi
from batch.errors import ApiError, FatalApiError, Stopped
from batch.report.summary import RunStats
from batch.send.retry import Action, RetryPolicy
from batch.store.answers import Store
from batch.store.ledger import Ledger, Upload

log = logging.getLogger("batch")
T = TypeVar("T")

class Submitter:
    """Advances uploads of one store at one Batch API; counts the batches it submits in `stats`."""

    def __init__(self, client: BatchApi, store: Store, stats: RunStats, *, window: str, job_name: str,
                 folder: Path) -> None:
        self._client, self._store, self._stats = client, store, stats
        self._ledger = Ledger(store)
        self._window, self._job_name, self._folder = window, job_name, folder
        self._rng = random.Random()

    async def advance(self, u: Upload, *, look_first: bool) -> None:
        """Take one upload as far as a submitted batch."""
        if u.file_id is None:
            file_id = await self._upload(u, look_first=look_first)
            if file_id is None:
                return
            u = dataclasses.replace(u, file_id=file_id)
        if u.batch_id is None and u.file_id is not None:
            await self._create(u, look_first=look_first)

    async def _upload(self, u: Upload, *, look_first: bool) -> str | None:
        path = self._folder / u.name
        for attempt in range(1, POLICY.max_attempts + 1):
            if look_first or attempt > 1:  # an earlier try may have reached Groq without our hearing
                found = await self.file_named(u.name)
                if found is not None:
                    log.info("batch: %s is already on Groq as %s; using it", u.name, found)
                    self._ledger.update(u.id, file_id=found, status="uploaded")
                    return found
            if not path.exists():
                self.give_up(u, f"its local file {path} is gone; its requests go into a new batch")
                return None
            try:
                obj = await self._client.upload_file(u.name, path)
            except ApiError as exc:
                if not POLICY.transient(exc):  # refused: nothing was stored, its requests go back to pending
                    self.give_up(u, f"Groq refused the upload: {exc}")
                await transient(exc, attempt, f"uploading {u.name}", self._rng)
                continue
            self._ledger.update(u.id, file_id=obj["id"], status="uploaded")
            return str(obj["id"])
        return None  # unreachable: the last transient failure raises

    async def _create(self, u: Upload, *, look_first: bool) -> None:
        assert u.file_id is not None
        for attempt in range(1, POLICY.max_attempts + 1):
            if look_first or attempt > 1:
                found = await self.batch_of(u.file_id)
                if found is not None:
                    log.info("batch: %s was already submitted as %s; attaching", u.name, found["id"])
                    self._record(u, found)
                    return
            try:
                obj = await self._client.create_batch(u.file_id, self._window,
                                                      {"job": self._job_name[:500], "file": u.name})
            except ApiError as exc:
                if not POLICY.transient(exc):  # refused: no batch exists, its requests go back to pending
                    self.give_up(u, f"Groq refused the batch: {exc}")
                    with contextlib.suppress(ApiError):
                        await self._client.delete_file(u.file_id)
                await transient(exc, attempt, f"submitting {u.name}", self._rng)
                continue
            self._record(u, obj)
            self._stats.batches += 1
            self._stats.batch_requests += u.lines
            log.info("batch: submitted %s as %s (%d requests, window %s)", u.name, obj["id"], u.lines,
                     self._window)
            return

    async def file_named(self, name: str) -> str | None:
        """Our file of that name on Groq (the oldest; later duplicates are deleted), if listing works."""
        try:
            files = await retrying(self._client.list_files, "listing files", self._rng)
        except FatalApiError as exc:
            if exc.status == 404:
                return None  # a server without a files list: upload again
            raise
        mine = sorted((f for f in files if f.get("filename") == name and f.get("purpose") == "batch"),
                      key=lambda f: (f.get("created_at") or 0, str(f.get("id"))))
        for extra in mine[1:]:
            log.info("batch: deleting %s, a duplicate upload of %s", extra.get("id"), name)
            try:
                await self._client.delete_file(str(extra["id"]))
            except ApiError as exc:
                log.warning("batch: could not delete the duplicate file %s: %s", extra.get("id"), exc)
        return str(mine[0]["id"]) if mine else None

    async def batch_of(self, file_id: str) -> dict[str, Any] | None:
        try:
            batches = await retrying(self._client.list_batches, "listing batches", self._rng)
        except FatalApiError as exc:
            if exc.status == 404:
                return None
            raise
        # The file is this upload's alone (its name is unique), so any batch of it is ours, whatever its
        # status: a failed or cancelled one is merged like any other, never submitted a second time.
        mine = [b for b in batches if b.get("input_file_id") == file_id]
        return max(mine, key=lambda b: b.get("created_at") or 0) if mine else None

    def _record(self, u: Upload, obj: dict[str, Any]) -> None:
        self._ledger.update(u.id, batch_id=str(obj["id"]),
                                  status=str(obj.get("status") or "validating"),
                                  counts=json.dumps(obj.get("request_counts")))

    def give_up(self, u: Upload, why: str) -> None:
        """Abandon an upload: its requests are pending again, and its local file is of no more use."""
        log.warning("batch: %s: %s", u.name, why)
        self._ledger.update(u.id, status="abandoned", detail=why, done=1)
        (self._folder / u.name).unlink(missing_ok=True)


# One retry policy for every path: the same classes are transient here as for chat requests.
POLICY = RetryPolicy()


async def transient(exc: ApiError, attempt: int, what: str, rng: random.Random) -> None:
    """Wait before the next try of a Batch API call, or raise if it cannot succeed."""
    decision = POLICY.decide(exc, attempt, rng)
    if decision.action is Action.QUOTA:
        raise Stopped(f"{what}: a daily quota is used up ({exc}); run the same command again later "
                      "(nothing is submitted twice)") from exc
    if decision.action is not Action.RETRY or not POLICY.transient(exc):
        if isinstance(exc, FatalApiError):
            raise exc
        raise FatalApiError(f"{what}: {exc}", status=exc.status, code=exc.code) from exc
    log.warning("batch: %s failed (%s); trying again in %.1f s", what, exc, decision.delay_s)
    await asyncio.sleep(decision.delay_s)


async def retrying(call: Callable[[], Awaitable[T]], what: str, rng: random.Random) -> T:
    """`call()`, tried again after transient failures."""
    for attempt in range(1, POLICY.max_attempts + 1):
        try:
            return await call()
        except ApiError as exc:
            await transient(exc, attempt, what, rng)
    raise AssertionError("unreachable")
