"""Answers for prompts a batch at a time, for a door that has prompts rather than a table (the SQL door):
one store, one client and one pacer for as long as it is open, however many batches come and from
however many callers at once.

    prompts ─► renderer (the job's template, `${prompt}`) ─► in flight here? wait for it
                                                           ─► store.lookup ─► stored: its answer
                                                           ─► pool (pacer, retry) ─► answer ─► store

The parts are the run's: the job's renderer, the store's look-up and group commit (`online.Committer`),
the pool with its retry policy, one pacer and one spend cap shared by every batch, so consecutive
batches and concurrent callers together stay under the limits. A batch returns once its answers are
committed, so what a caller was given is in the store even if it stops right after. A request another
batch is sending is waited for, not sent twice. Interrupted (its task cancelled), a batch takes no new
requests, lets those on the wire finish and commits their answers before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from batch.engine.commits import Committer
from batch.engine.online import local_pacer
from batch.engine.preflight import check_model
from batch.engine.stops import raise_stop
from batch.job.config import Job
from batch.job.endpoint import Endpoint
from batch.job.schema import judge, shape_of
from batch.records import Answer, Request
from batch.render.packer import packer_for
from batch.render.packs import RESENT
from batch.render.prompts import Renderer, renderer_for
from batch.report.summary import RunStats, Summary
from batch.send.client import Client
from batch.send.pool import Pool
from batch.send.retry import RetryPolicy
from batch.send.servers import spoken_by
from batch.send.spendcap import SpendCap
from batch.store.answers import Store, stored_answer
from batch.store.database import StoreWriteError
from batch.tables.answered import chunk as prompts_chunk

PROMPT = "prompt"  # the column the prompts are rendered from: templates name it `${prompt}`


class Answering:
    """`answer(prompts)` for one job against one endpoint, between `open()` and `close()`, all on one
    event loop. Counts for the store's run record: rows asked (`rows`), answered well (`ok`), taken
    from the store (`from_store`)."""

    def __init__(self, job: Job, endpoint: Endpoint, *, retry_failed: bool = False) -> None:
        self.job, self.endpoint, self._retry_failed = job, endpoint, retry_failed
        self.stats = RunStats()
        self.rows = self.ok = self.from_store = 0
        self._shape = shape_of(job.task.response_format)
        self._pacer = local_pacer(endpoint, job.limits)  # the one pacer: every batch's requests share it
        self._policy = RetryPolicy(max_attempts=job.limits.max_attempts)
        # A request being sent -> its answer; kept until the answer is committed, so that a look-up in
        # between (which cannot see answers not yet committed) never sends it again.
        self._inflight: dict[str, asyncio.Future[Answer]] = {}
        self._write_error: StoreWriteError | None = None
        self._checked = endpoint.simulated  # the server's model list, asked before the first request
        self._store: Store | None = None
        self._exit = contextlib.AsyncExitStack()  # the client's session
        self._client: Client | None = None
        self._committer: Committer | None = None
        self._renderer: Renderer | None = None
        self._spend_cap: SpendCap | None = None

    async def open(self) -> None:
        job, endpoint = self.job, self.endpoint
        # Shared: a registration lives as long as its connection, and must not lock other calls out.
        self._store = store = Store(job.state.path, shared=True)
        store.begin_run()
        self._renderer = renderer_for(job, endpoint.base_url, server=await spoken_by(job, endpoint))
        if job.limits.max_cost_usd is not None:
            self._spend_cap = SpendCap(job.limits.max_cost_usd, job.task.model,
                                       self._renderer.completion_budget)
        self._client = await self._exit.enter_async_context(Client(
            endpoint.base_url, endpoint.key, timeout_s=job.limits.request_timeout,
            connections=job.limits.concurrency))
        self._committer = Committer(store, self._failed)

    def _failed(self, exc: StoreWriteError) -> None:
        self._write_error = self._write_error or exc

    async def answer(self, prompts: Sequence[str | None]) -> list[Answer | None]:
        """Each prompt's answer (a failure is an Answer with `error`), None for a None prompt."""
        assert self._renderer is not None, "open() first"
        out: list[Answer | None] = [None] * len(prompts)
        given = [i for i, p in enumerate(prompts) if p is not None]
        rows: dict[str, list[int]] = {}  # fingerprint -> the positions that asked for it
        requests: dict[str, Request] = {}
        if not given:
            return out
        for group in self._renderer.groups(prompts_chunk(PROMPT, [p for p in prompts if p is not None]), 0):
            for i, fp in enumerate(group.fingerprints):
                where = given[group.first_row + i]
                if fp is None:  # the row cannot become a request: it fails, nothing is sent
                    out[where] = Answer.failure("", group.errors[i] or "", permanent=True, attempts=0)
                    continue
                if fp not in rows:
                    rows[fp] = []
                    requests[fp] = group.request(i)
                rows[fp].append(where)
        answers: dict[str, Answer] = {}
        stored: set[str] = set()
        while len(answers) < len(rows):  # again only for requests whose sender stopped without answer
            answers |= await self._round([fp for fp in rows if fp not in answers], requests, stored)
        for fp, places in rows.items():
            for where in places:
                out[where] = answers[fp]
        self.rows += len(given)
        self.from_store += sum(len(rows[fp]) for fp in stored)
        self.ok += sum(1 for a in out if a is not None and a.ok)
        return out

    async def _round(self, todo: list[str], requests: dict[str, Request],
                     from_store: set[str]) -> dict[str, Answer]:
        """The answers of `todo`: another batch's (waited for), stored ones (noted in `from_store`), and
        the rest sent; a request whose sender stopped before its answer is left out."""
        assert self._store is not None
        waited = {fp: self._inflight[fp] for fp in todo if fp in self._inflight}
        rest = [fp for fp in todo if fp not in waited]
        _, stored = self._store.lookup(rest, retry_failed=self._retry_failed)
        got = {fp: stored_answer(row) for fp, row in stored.items()}
        from_store |= got.keys()
        send = [requests[fp] for fp in rest if fp not in got]
        if send:
            got |= await self._send(send)
        if waited:
            await asyncio.wait(waited.values())  # never cancels them, nor raises their cancellation
            got |= {fp: f.result() for fp, f in waited.items() if not f.cancelled()}
        return got

    async def _send(self, requests: list[Request]) -> dict[str, Answer]:
        assert self._client is not None and self._committer is not None and self._store is not None
        assert self._renderer is not None
        store, committer = self._store, self._committer
        loop = asyncio.get_running_loop()
        mine = {r.fingerprint: loop.create_future() for r in requests}
        self._inflight |= mine
        got: dict[str, Answer] = {}

        def on_answer(answer: Answer) -> None:
            answer = judge(self._shape, answer)
            store.journal.hold(answer)
            committer.poke()  # committed at once, off the loop
            self.stats.record_answer(answer, counted=answer.error != RESENT)  # RESENT: its cost only
            got[answer.fingerprint] = answer
            if not (future := mine[answer.fingerprint]).done():
                future.set_result(answer)

        pool = Pool(self._client.chat, self._pacer, self._policy, concurrency=self.job.limits.concurrency,
                    on_answer=on_answer, stats=self.stats, spend_cap=self._spend_cap)
        # rows-per-request: the rows' fingerprints are those of rows asked in a pack, so they go in packs.
        packer = packer_for(self._renderer, self._shape, tries=self.job.limits.max_attempts,
                            tokens_per_minute=lambda: pool.pacer.tokens_per_minute)
        if packer is not None:
            requests = [p for r in requests for p in packer.add(r)] + list(packer.flush())
        try:
            await self._check()
            sending = asyncio.ensure_future(pool.run(requests))
            try:
                await asyncio.shield(sending)
            except asyncio.CancelledError:  # interrupted: what is on the wire still lands in the store
                pool.stop("interrupted")
                await asyncio.wait([sending])
                raise
        finally:
            await asyncio.shield(committer.settled())
            for fp, future in mine.items():
                self._inflight.pop(fp, None)
                if not future.done():
                    future.cancel()  # a batch waiting for it sends it itself
        self._raise_stop(pool)
        return got

    async def _check(self) -> None:
        if not self._checked:
            await check_model(self.job, self.endpoint.base_url, self.endpoint.key)  # raises: nothing sent
            self._checked = True

    def _raise_stop(self, pool: Pool) -> None:
        """What stops every batch, not one row: raised as the run would."""
        if self._write_error is not None:
            raise self._write_error
        raise_stop(pool, self._spend_cap,
                   f"stopped ({pool.stop_reason}); answers so far are saved: ask again to resume")

    async def close(self) -> None:
        """Commit what is left, record the run in the store, and let go of the client and the store."""
        try:
            if self._committer is not None:
                await self._committer.drain()
            if self._store is not None:
                self._store.flush()
                failed = self.rows - self.ok
                summary = Summary.build(self.stats, status="complete" if failed == 0 else "failed-rows",
                                        model=self.job.task.model, rows=self.rows, rows_ok=self.ok,
                                        rows_failed=failed, rows_from_store=self.from_store, output=None,
                                        max_cost_usd=self.job.limits.max_cost_usd)
                self._store.finish_run(summary.to_json())
        finally:
            await self._exit.aclose()
            if self._store is not None:
                self._store.close()
            self._client = self._store = self._committer = None

