"""Progress for long runs: a tqdm bar on a terminal, a compact log line every 30 s elsewhere (cron).

It only displays; the numbers come from `RunStats`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Never

from batch.report.logs import stderr_handler as stderr_handler  # every door's log lines
from batch.report.summary import RunStats

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("batch")


class Progress:
    def __init__(self, total_rows: int, stats: RunStats, *, tty: bool, enabled: bool = True,
                 interval_s: float = 30.0, notebook: bool = False) -> None:
        self.total, self.done = total_rows, 0
        self._stats = stats
        self._interval = interval_s
        self._next_line = time.monotonic() + interval_s
        self._next_postfix = 0.0
        self._bar: tqdm[Never] | None = None
        self._enabled = enabled
        if enabled and notebook:
            from tqdm.notebook import tqdm as widget  # a notebook's bar; needs ipywidgets there

            self._bar = widget(total=total_rows, unit="row", smoothing=0.05)
        elif enabled and tty:
            from tqdm import tqdm  # loaded for a terminal's bar only (25 ms of start-up)

            self._bar = tqdm(total=total_rows, unit="row", dynamic_ncols=True, smoothing=0.05)

    def advance(self, rows: int = 1) -> None:
        self.done += rows
        if not self._enabled:
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(rows)
            if now >= self._next_postfix:
                self._next_postfix = now + 0.5
                self._bar.set_postfix_str(self._rates(), refresh=False)
        elif now >= self._next_line:
            self._next_line = now + self._interval
            log.info("progress %d/%d rows (%.0f%%) | %s", self.done, self.total,
                     100.0 * self.done / max(self.total, 1), self._rates())

    def _rates(self) -> str:
        s = self._stats
        errors = sum(s.errors.values())
        return (f"{s.per_minute(s.requests):.0f} req/min, "
                f"{s.per_minute(s.input_tokens + s.output_tokens):.0f} tok/min, {errors} errors")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._rates(), refresh=False)
            self._bar.close()


class BatchProgress:
    """Batch mode: a line when a batch's status changes, its counts at most every `interval_s`; on a
    terminal, also a bar of requests finished (completed + failed) over every batch being watched."""

    def __init__(self, *, tty: bool, enabled: bool = True, interval_s: float = 30.0) -> None:
        self._enabled, self._tty, self._interval = enabled, tty, interval_s
        self._seen: dict[str, tuple[str, float]] = {}  # batch -> (status, when its counts were logged)
        self._done: dict[str, tuple[int, int]] = {}  # batch -> (finished, total)
        self._bar: tqdm[Never] | None = None

    def show(self, batch_id: str, status: str, completed: int, failed: int, total: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        last_status, last_t = self._seen.get(batch_id, ("", 0.0))
        if status != last_status or (not self._tty and now - last_t >= self._interval):
            self._seen[batch_id] = (status, now)
            message = f"batch {batch_id}: {status}, {completed:,}/{total:,} answered, {failed:,} failed"
            if self._bar is not None:
                self._bar.write(message)
            else:
                log.info("%s", message)
        self._done[batch_id] = (completed + failed, total)
        if self._tty:
            finished, total_all = (sum(v) for v in zip(*self._done.values(), strict=True))
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total_all, unit="req", dynamic_ncols=True, desc="batches")
            self._bar.total = total_all
            self._bar.n = finished
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
