"""How a job's run is watched — its `[run] metrics-file` and `log-format` — read from the job file even
when the job is invalid: a refused job still logs in the format asked for and records its exit code.

`config` validates the same keys for a job that loads; this reader only trusts what it can read.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Watch:
    metrics_file: Path | None = None
    log_format: str = "text"  # "text" | "json"


def watch_of(job_file: Path) -> Watch:
    """What the job file's [run] table says, as far as it can be read; the defaults otherwise."""
    try:
        data = tomllib.loads(job_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Watch()
    run = data.get("run")
    if not isinstance(run, dict):
        return Watch()
    path, fmt = run.get("metrics-file"), run.get("log-format")
    # A value that validation would refuse (not a string, empty, a pasted key) names no file to write.
    usable = isinstance(path, str) and path.strip() and not path.startswith("gsk_")
    return Watch(metrics_file=(job_file.resolve().parent / path).resolve()
                 if usable and isinstance(path, str) else None,
                 log_format="json" if isinstance(fmt, str) and fmt.lower() == "json" else "text")
