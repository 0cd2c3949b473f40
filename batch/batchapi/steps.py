"""The Batch API's steps as phases of the run's trace (`report.phases`), each a child span of the run
when it is traced, with its counts read off the run's own counters (nothing of the rows):

    submit  a round of uploads and batches (the first round also continues what an earlier run left
            half-done): batch.round, batch.batches_submitted, batch.requests_submitted
    wait    polling the open batches and sleeping between polls: batch.polls
    merge   one ended batch's results into the store: batch.batch_id, batch.batch_status,
            batch.requests (its lines), batch.results_merged

A wait ends where a merge begins and starts again with the next poll or sleep, so that waiting and
merging never overlap: a run of one batch reads submit, wait, merge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from batch.report.phases import Figure, Phase, no_phase
from batch.report.summary import RunStats
from batch.store.ledger import Upload

SUBMIT, WAIT, MERGE = (f"batch.batch_api.{step}" for step in ("submit", "wait", "merge"))
T = TypeVar("T")


class Trace:
    """One run's Batch API steps; `phase` is the run's (`no_phase`: not traced, nothing recorded)."""

    def __init__(self, stats: RunStats, phase: Phase = no_phase) -> None:
        self._stats, self._phase = stats, phase
        self._waits = contextlib.ExitStack()  # the wait open now, if any
        self._polls: dict[str, Figure] | None = None  # its figures

    @contextlib.contextmanager
    def submitting(self, round_: int) -> Iterator[None]:
        s = self._stats
        before = s.batches, s.batch_requests
        with self._phase(SUBMIT, **{"batch.round": round_}) as figures:
            try:
                yield
            finally:
                figures.update({"batch.batches_submitted": s.batches - before[0],
                                "batch.requests_submitted": s.batch_requests - before[1]})

    async def waited(self, watch: Awaitable[T]) -> T:
        """The watch over the open batches; a wait still open ends with it."""
        with self._waits:
            try:
                return await watch
            finally:
                self._polls = None

    def poll(self, u: Upload) -> Upload:
        """`u` about to be polled: a poll of the wait (begun if none is open)."""
        polls = self._wait()
        polls["batch.polls"] = int(polls["batch.polls"]) + 1
        return u

    async def sleep(self, pause: Awaitable[T]) -> T:
        """A pause between polls: part of the wait (begun if none is open)."""
        self._wait()
        return await pause

    async def merged(self, u: Upload, obj: dict[str, Any], merge: Awaitable[T]) -> T:
        """The merge of an ended batch (`obj`, Groq's), which ends the wait."""
        self._polls = None
        self._waits.close()
        before = self._stats.batch_results
        given: dict[str, Figure] = {"batch.batch_id": str(u.batch_id), "batch.requests": u.lines,
                                    "batch.batch_status": str(obj.get("status"))}
        with self._phase(MERGE, **given) as figures:
            try:
                return await merge
            finally:
                figures["batch.results_merged"] = self._stats.batch_results - before

    def _wait(self) -> dict[str, Figure]:
        if self._polls is None:
            self._polls = self._waits.enter_context(self._phase(WAIT))
            self._polls["batch.polls"] = 0
        return self._polls
