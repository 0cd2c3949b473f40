"""The report's page is drawn in a process of its own (`draw`), started as pass 2 begins: matplotlib
loads there while this process writes the output (on the other core), never into the run's memory or
a notebook's kernel, and a drawing that hangs is ended at the deadline instead of holding the run.

`Drawer.start()` spawns it; `page(data)` hands it the report's data and waits for the page (at most
`DRAW_S`); `close()` ends it if it was never used. If no process can be started (an embedded
interpreter), the page is drawn here, as a last resort.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from batch.report import child

DRAW_S = 120.0  # at most, for the drawing process to answer: a page takes well under a second


class DrawingFailed(Exception):
    """The drawing process answered no page; the message is what it said (`child.HelperFailed`: it did
    not answer at all)."""


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
        """The page for `data`; raises DrawingFailed or child.HelperFailed (or the renderer's error,
        when drawn here)."""
        proc, self._proc = self._proc, None
        if proc is None:
            from batch.report.html.page import render  # no process: drawn here
            return render(data)
        out, err = child.ask(proc, json.dumps(data).encode(), DRAW_S, "the drawing process")
        if proc.returncode != 0:
            raise DrawingFailed(child.last_line(err))
        return out.decode("utf-8")

    def close(self) -> None:
        """End the process if its page was never asked for (the run failed before its report)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            child.end(proc)

