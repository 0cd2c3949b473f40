"""The report's page is drawn in a process of its own (`draw`), started as pass 2 begins: matplotlib
loads there while this process writes the output (on the other core), never into the run's memory or
a notebook's kernel, and a drawing that hangs is ended at the deadline instead of holding the run.

`Drawer.start()` spawns it; `page(data)` hands it the report's data and waits for the page (at most
`DRAW_S`); `close()` ends it if it was never used. If no process can be started (an embedded
interpreter), the page is drawn here, as a last resort.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from typing import Any

from batch.report import child

DRAW_S = 120.0  # at most, for the drawing process to answer: a page takes well under a second
REAP_S = 10.0


class DrawingFailed(Exception):
    """The drawing process did not answer a page; the message says what it said."""


class Drawer:
    def __init__(self, proc: subprocess.Popen[bytes] | None) -> None:
        self._proc = proc

    @classmethod
    def start(cls) -> Drawer:
        try:
            return cls(child.spawn("batch.report.html.draw"))
        except OSError:
            return cls(None)

    def page(self, data: dict[str, Any]) -> str:
        """The page for `data`; raises DrawingFailed (or the renderer's error, when drawn here)."""
        proc, self._proc = self._proc, None
        if proc is None:
            from batch.report.html.page import render  # no process: drawn here
            return render(data)
        try:
            out, err = proc.communicate(json.dumps(data).encode(), timeout=DRAW_S)
        except subprocess.TimeoutExpired:
            _end(proc)
            raise DrawingFailed(f"the drawing process did not answer within {DRAW_S:g}s") from None
        except OSError as exc:  # it died before reading (a broken pipe)
            raise DrawingFailed(f"the drawing process ended early ({exc}): {child.last_line(_end(proc))}") \
                from None
        if proc.returncode != 0:
            raise DrawingFailed(child.last_line(err))
        return out.decode("utf-8")

    def close(self) -> None:
        """End the process if its page was never asked for (the run failed before its report)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)


def _end(proc: subprocess.Popen[bytes]) -> bytes:
    """Kill it, reap it, close its pipes; what it said on stderr."""
    proc.kill()
    err = b""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        err = proc.communicate(timeout=REAP_S)[1] or b""  # a killed process is gone at once
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return err
