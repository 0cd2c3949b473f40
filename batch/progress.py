"""Progress for long runs: a tqdm bar on a terminal, a compact log line every 30 s elsewhere (cron).

It only displays; the numbers come from `RunStats`.
"""

from __future__ import annotations

import logging
import time
from typing import Never

from tqdm import tqdm

from .report import RunStats

log = logging.getLogger("batch")


class Progress:
    def __init__(self, total_rows: int, stats: RunStats, *, tty: bool, enabled: bool = True,
                 interval_s: float = 30.0) -> None:
        self.total, self.done = total_rows, 0
        self._stats = stats
        self._interval = interval_s
        self._next_line = time.monotonic() + interval_s
        self._next_postfix = 0.0
        self._bar: tqdm[Never] | None = None
        self._enabled = enabled
        if enabled and tty:
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
