"""A child's whole-life peak memory, as GNU time measures it (`%M`, its maximum resident set).

The run's report has its own `peak_rss_mb`, but it is taken when the summary is built, before the
HTML report is drawn; and a child's own ru_maxrss, read by the parent, may include the parent's
memory at the fork. GNU time forks the run from its own small process, so `%M` is the run's, whole.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"  # Debian's `time` package


def run_measured(argv: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], float]:
    """subprocess.run(argv, text=True, **kwargs), and the child's peak RSS in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "time"
        proc = subprocess.run([TIME, "-o", str(out), "-f", "%M", *argv], text=True, **kwargs)
        lines = out.read_text().split()
        return proc, (int(lines[-1]) / 1024 if lines else 0.0)
