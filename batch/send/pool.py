"""The worker pool: `concurrency` workers, a bounded intake, retries that hold no slot.

    requests ──► intake (at most `2 x concurrency` admitted and unfinished) ──► queue ──► worker x
    concurrency: pace ─► send ─► answer | retry (on a timer, back to the queue) | give up | stop

Memory is bounded by the intake (`intake`), not by the input. A request waiting out a backoff sits on
a timer, not in a worker, so a backoff sleep holds no concurrency. A 429 cools every worker down
together (`Pacing.cool_down`). Stopping (a signal, a spent daily quota, a fatal API error) takes no
new work: queued and backing-off requests are dropped unanswered (the next run sends them; a pack's
rows keep what earlier packs cost them), workers waiting for the pacer are cancelled, and requests on
the wire finish. A pack (`render.packs`) is one request to the pacer, the spend cap and the retry
policy; answered, it comes apart into its rows' answers and smaller packs of the others, queued at
once; refused for good, or too large, it is split.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable

from batch.errors import ApiError, FatalApiError, RateLimited
from batch.records import Answer, Completion, Request
from batch.report.logs import about
from batch.report.summary import RunStats
from batch.send.intake import Admitted as _Job
from batch.send.intake import Intake, each
from batch.send.pacing import Pacing, too_large
from batch.send.responses import textless
from batch.send.retry import Action, RetryPolicy
from batch.send.spendcap import SpendCap
from batch.send.stops import Breaker, Quota, daily_quota

log = logging.getLogger("batch.pool")
Send = Callable[[bytes], Awaitable[Completion]]


class Pool:
    def __init__(self, send: Send, pacer: Pacing, policy: RetryPolicy, *, concurrency: int,
                 on_answer: Callable[[Answer], None], stats: RunStats,
                 rng: random.Random | None = None, spend_cap: SpendCap | None = None) -> None:
        self._send, self.pacer, self._policy = send, pacer, policy
        self.spend_cap = spend_cap  # the run's spend cap: a request is sent only if its worst case fits
        self._concurrency = concurrency
        self._on_answer = on_answer
        self.stats = stats
        self._rng = rng or random.Random()
        self._intake = Intake(2 * concurrency)
        self.outstanding = self._intake.outstanding  # fingerprints admitted, not answered or dropped yet
        self._timers: dict[int, tuple[asyncio.TimerHandle, _Job]] = {}  # id(job) -> its backoff timer
        self._workers: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.stop_reason: str | None = None
        self.fatal: FatalApiError | None = None
        self.quota: Quota | None = None  # set when a spent daily quota left requests unsent
        self._breaker = Breaker()
        self._spent: Quota | None = None  # the daily request quota is used up (from the headers)
        self._crash: Exception | None = None

    async def run(self, requests: Iterable[Request] | AsyncIterable[Request]) -> None:
        """Send every request (until stopped); returns when none is left in the system. An async
        producer may hand the loop back while it prepares the next requests."""
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        try:
            async for request in each(requests):
                if self.stop_reason:
                    break
                await self._intake.place()
                if self.stop_reason:
                    self._intake.give_back()
                    break
                self._intake.admit(request)
            await self._intake.idle()
        finally:
            for handle, _ in self._timers.values():
                handle.cancel()
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._crash is not None:
            raise RuntimeError("internal error in a worker") from self._crash

    def stop(self, reason: str) -> None:
        """Take no new work; let requests on the wire finish."""
        if self.stop_reason:
            return
        self.stop_reason = reason
        for handle, job in self._timers.values():
            handle.cancel()
            self._finish(job)
        self._timers.clear()
        for job in self._intake.queued():
            self._finish(job)
        for task in self._workers:
            if task not in self._sending:
                task.cancel()

    def _finish(self, job: _Job) -> None:
        """Dropped unanswered (the next run sends it); a pack's rows keep what earlier packs cost them."""
        self._shelve(job.request)
        self._intake.finish(job)

    def _shelve(self, request: Request) -> None:
        for answer in request.pack.shelved() if request.pack is not None else ():
            self._on_answer(answer)

    def _answer(self, job: _Job, answer: Answer) -> None:
        self._on_answer(answer)  # stored before the fingerprint leaves `outstanding`
        self._intake.finish(job)

    def _unpacked(self, job: _Job, answers: list[Answer], again: list[Request]) -> None:
        """A pack's rows: those answered stored, the others queued again in smaller packs (stopping:
        left for the next run)."""
        keep: set[str] = set()
        for request in again:
            if self.stop_reason:
                self._shelve(request)
                continue
            keep.update(request.fingerprints)
            self._intake.admit(request, place=False)
        for answer in answers:
            self._on_answer(answer)
        self._intake.finish(job, frozenset(keep))

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            job = await self._intake.queue.get()
            try:
                await self._attempt(job, me)
            except asyncio.CancelledError:
                self._finish(job)
                raise
            except Exception as exc:  # a bug: stop cleanly (answers so far are kept), then surface it
                self._crash = self._crash or exc
                self._finish(job)
                self.stop("internal error")

    async def _attempt(self, job: _Job, me: asyncio.Task[None]) -> None:
        req = job.request
        self.quota = self.quota or self._spent
        cost = await self.spend_cap.reserve(req.est_tokens) if self.spend_cap is not None and \
            self._spent is None else 0.0
        if self._spent is not None or cost is None:  # take no new work; the next run continues
            self._finish(job)
            self.stop("daily quota reached" if self._spent is not None else "spend cap reached")
            return
        if (job.attempts == 0 and not self.pacer.fits(req.est_tokens)) or \
                not await self.pacer.acquire(req.est_tokens):
            self._refund(cost)
            self._fail(job, too_large(req.est_tokens, self.pacer.tokens_per_minute), permanent=True)
            return
        if self.stop_reason:
            self._refund(cost)
            self._finish(job)
            return
        job.attempts += 1
        self.stats.record_request(self.pacer.requests_per_minute, self.pacer.tokens_per_minute)
        started = time.monotonic()
        self._sending.add(me)
        try:
            completion = await self._send(req.body)
        except ApiError as exc:
            self._refund(cost)  # a refused or failed request is not billed
            self._failed(job, exc)
            return
        finally:
            self._sending.discard(me)
        latency = time.monotonic() - started
        self.pacer.settle(req.est_tokens, completion.total_tokens)
        self.pacer.observe(completion.rate)
        answer = Answer.from_completion(req.fingerprint, completion, attempts=job.attempts,
                                        latency_s=round(latency, 4))
        if self.spend_cap is not None:
            self.spend_cap.settle(cost, answer)
        self._spent = self._spent or daily_quota(completion.rate.requests_remaining_day,
                                                  completion.rate.requests_reset_s, self.pacer)
        if req.pack is not None:
            answers, again = req.pack.answers(completion, attempts=job.attempts, latency_s=answer.latency_s)
            self.stats.record_pack(len(req.fingerprints), sum(len(r.fingerprints) for r in again))
            self._breaker.succeeded(True)
            self._unpacked(job, answers, again)
            return
        answer = textless(answer)
        self._breaker.succeeded(answer.ok)
        self._answer(job, answer)

    def _fail(self, job: _Job, error: str, *, permanent: bool, request_id: str | None = None) -> None:
        """The request failed: its row's failure, or its rows' in a pack; a pack refused for good is
        split instead (one row of it, or its size, may be why: smaller packs tell)."""
        req = job.request
        if req.pack is not None and permanent and len(req.fingerprints) > 1:
            self._unpacked(job, [], req.pack.split())
        elif req.pack is not None:
            self._unpacked(job, req.pack.failures(error, permanent=permanent, attempts=job.attempts,
                                                  request_id=request_id), [])
        else:
            self._answer(job, Answer.failure(req.fingerprint, error, permanent=permanent,
                                             attempts=job.attempts, request_id=request_id))

    def _refund(self, cost: float) -> None:
        if self.spend_cap is not None:
            self.spend_cap.release(cost)

    def _failed(self, job: _Job, exc: ApiError) -> None:
        req, exc = job.request, self._breaker.judged(exc)  # a refused request shape ends the run
        decision = self._policy.decide(exc, job.attempts, self._rng)
        self.stats.record_error(exc)
        if isinstance(exc, RateLimited):
            self.pacer.settle(req.est_tokens, 0)  # a refused request used nothing
            self.pacer.learn_limit(exc.limit, exc.limit_value)
            if decision.action is Action.RETRY:
                self.pacer.cool_down(decision.delay_s)
        if decision.action is Action.RETRY:
            self.stats.record_retry()
            log.debug("retry row=%d attempt=%d in %.2fs: %s", req.row + 1, job.attempts, decision.delay_s,
                      exc.describe(), extra=about(req.row + 1, job.attempts, exc.status, decision.delay_s))
            if self.stop_reason:
                self._finish(job)
                return
            handle = asyncio.get_running_loop().call_later(decision.delay_s, self._requeue, job)
            self._timers[id(job)] = (handle, job)
        elif decision.action is Action.GIVE_UP:
            log.debug("give up row=%d after %d attempts: %s", req.row + 1, job.attempts, exc.describe(),
                      extra=about(req.row + 1, job.attempts, exc.status))
            self._fail(job, exc.describe(), permanent=decision.permanent, request_id=exc.request_id)
            if decision.permanent and (fatal := self._breaker.rejected(exc)) and self.fatal is None:
                self.fatal = fatal
                self.stop("every request is rejected")
        elif decision.action is Action.QUOTA:
            assert isinstance(exc, RateLimited)
            self.quota = self.quota or Quota(exc.limit or "daily", exc.retry_after)
            self._finish(job)
            self.stop("daily quota reached")
        else:
            assert isinstance(exc, FatalApiError)
            self.fatal = self.fatal or exc
            self._finish(job)
            self.stop("fatal API error")

    def _requeue(self, job: _Job) -> None:
        self._timers.pop(id(job), None)
        if self.stop_reason:
            self._finish(job)
        else:
            self._intake.queue.put_nowait(job)

