"""The report's drawing process: `python -m batch.report.html.draw`, started by `drawer` as pass 2
begins. It imports the renderer (`page`, and with it matplotlib: about 0.3 s and 20 MB) while the run
writes its output, then reads the report's data as one JSON document on stdin and answers the page on
stdout (exit 0), or its error as the last line of stderr (exit 1). It writes no file: where the page
goes, and what a failure to write it means, is the run's business (`write.write_html`).
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main() -> int:
    # A stop signal is the run's to act on (a stopped run still draws its report); the run closes the
    # pipe or kills this process at its deadline.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    from batch.report.html.page import render  # matplotlib: while the run is still busy

    text = sys.stdin.buffer.read()
    if not text:  # the run ended without a report to draw
        return 0
    try:
        page = render(json.loads(text))
    except Exception as exc:  # said to the run, which warns; the run's outcome is unchanged
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.buffer.write(page.encode("utf-8"))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown (matplotlib's thousands of objects) to wait for
