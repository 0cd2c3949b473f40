"""A virtual-time asyncio event loop: tests of pacing and backoff that never sleep.

The trick: an event loop computes, on each turn, how long it may block in `select()` — zero when
callbacks are ready, else the time until its earliest timer, else forever — and then asks its
selector. `VirtualLoop.time()` reads a virtual clock (starting at 0.0), and the loop's selector is
wrapped: it always polls the real file descriptors with timeout 0, and when nothing is ready it
moves the virtual clock forward by the timeout instead of waiting. So `asyncio.sleep(60)` returns at
once with `loop.time()` 60 s later, timers fire in order, and anything that reads `loop.time()`
(aiolimiter, `asyncio.timeout`, `call_later`) lives on the same clock. Real I/O still works, but a
wait for it takes no virtual time, so do not mix this loop with sockets or threads that take long.
Every non-blocking turn costs 1 ns of virtual time, as a real turn costs real time: without it, a
callback that re-arms a timer for "now" (aiolimiter does, when float rounding leaves its bucket a hair
too full) would spin forever on a clock that never moves. Blocking forever (no timer, nothing ready,
no real I/O within 2 real seconds) is a deadlock in a test: it raises instead of hanging.

`HeldClock` is the other kind: real time for a simulator serving a real client in a subprocess, which
the test holds still (a batch stays in progress while it is killed) or moves on (a simulated day ends).
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
_DEADLOCK_S = 2.0  # real seconds a timer-less loop may wait for real I/O before it counts as stuck
_TURN_S = 1e-9  # virtual cost of one loop turn


class _JumpingSelector(selectors.BaseSelector):
    """Delegates to a real selector; a blocking select() advances the virtual clock instead."""

    def __init__(self) -> None:
        self.now = 0.0
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0 if timeout is not None else _DEADLOCK_S)
        if not ready and timeout is None:
            raise RuntimeError("virtual loop deadlock: nothing scheduled and nothing to wait for")
        self.now += timeout if not ready and timeout else _TURN_S
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _JumpingSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh virtual-time loop and return its result."""
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(coro)


def now() -> float:
    """The running loop's clock: virtual seconds since the start, inside `run_virtual`."""
    return asyncio.get_running_loop().time()


class HeldClock:
    """Real monotonic time that a test can hold still and move on by hand, for a simulator whose
    batches, simulated days and rate-limit windows should not move while the test looks (pass it as
    `Simulator(config, clock=...)`). It never goes back. Thread-safe: the simulator reads it on its
    own loop while the test holds, moves and releases it."""

    def __init__(self, *, held: bool = False) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._held_at: float | None = time.monotonic() if held else None

    def __call__(self) -> float:
        with self._lock:
            return (self._held_at if self._held_at is not None else time.monotonic()) + self._offset

    def hold(self) -> None:
        with self._lock:
            if self._held_at is None:
                self._held_at = time.monotonic()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def release(self) -> None:
        """Run on with real time again, from where the clock stood."""
        with self._lock:
            if self._held_at is not None:
                self._offset -= time.monotonic() - self._held_at
                self._held_at = None
