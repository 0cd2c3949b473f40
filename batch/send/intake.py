"""What the worker pool holds: the requests admitted and not yet finished, the fingerprints they
answer, and the places left for the producer.

At most `places` requests from the producer are in the system at once (queued, backing off, waiting
for the pacer or on the wire): the producer waits for a place before it admits the next, so memory
follows what is in flight, not the input. A pack's rows sent again in smaller packs take no place:
they are at most the rows of a pack already admitted, and waiting for a place there could deadlock
the worker that admits them. A request is finished when it is answered, given up or dropped; the
pool is idle when none is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

from batch.records import Request


@dataclass(slots=True)
class Admitted:
    request: Request
    attempts: int = 0
    place: bool = True  # holds one of the producer's places (a pack's rows sent again do not)


class Intake:
    def __init__(self, places: int) -> None:
        self.queue: asyncio.Queue[Admitted] = asyncio.Queue()
        self._free = places
        # A producer that waited is woken once a quarter of the places are free, and fills them in one
        # go: once a few dozen requests rather than once a request (a task switch each, against a fast
        # server), while the requests still queued keep every worker busy meanwhile.
        self._refill_at = max(1, places // 4)
        self._room = asyncio.Event()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self.outstanding: set[str] = set()  # fingerprints admitted and not yet answered or dropped

    async def place(self) -> None:
        """Wait for a free place (then `admit`, or `give_back` it). One producer at a time."""
        while self._free <= 0:
            self._room.clear()
            await self._room.wait()
        self._free -= 1

    def give_back(self) -> None:
        self._free += 1
        if self._free >= self._refill_at:
            self._room.set()

    def admit(self, request: Request, *, place: bool = True) -> None:
        self.outstanding.update(request.fingerprints)
        self._unfinished += 1
        self._idle.clear()
        self.queue.put_nowait(Admitted(request, place=place))

    def finish(self, job: Admitted, keep: frozenset[str] = frozenset()) -> None:
        """The job is done with; its fingerprints leave `outstanding`, but for those in `keep` (rows
        of a pack admitted again in a smaller one)."""
        for fp in job.request.fingerprints:
            if fp not in keep:
                self.outstanding.discard(fp)
        if job.place:
            self.give_back()
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    def queued(self) -> list[Admitted]:
        """Take every job waiting in the queue (a stop drops them)."""
        jobs = []
        while not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        return jobs

    async def idle(self) -> None:
        """Wait until no admitted request is left."""
        if self._unfinished:
            await self._idle.wait()


def each(requests: Iterable[Request] | AsyncIterable[Request]) -> AsyncIterable[Request]:
    """The producer's requests, whichever kind of iterable it is (an async one as it is: a generator
    around it would cost a step of its own for every request)."""
    return requests if isinstance(requests, AsyncIterable) else _of(requests)


async def _of(requests: Iterable[Request]) -> AsyncIterator[Request]:
    for r in requests:
        yield r
