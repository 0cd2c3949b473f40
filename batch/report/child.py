"""Starting a helper process of batch's own (`python -m batch.report.<module>`): the OTLP exporter
(`otlp`) and the report's drawing (`html.draw`). Each gets the run's environment without the API key
(it has no use for it), the folder batch was imported from on its path (so that the same batch answers
`-m`), and a session of its own: a terminal's Ctrl-C, sent to the run's whole process group, is the
run's to handle (it stops, exit 3, and still writes its report and exports how it ended).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def spawn(module: str) -> subprocess.Popen[bytes]:
    """`python -m <module>` with pipes on stdin, stdout and stderr; raises OSError if it cannot start
    (an embedded interpreter with no executable of its own)."""
    return subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(), start_new_session=True)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    home = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), home) if p)
    return env


def last_line(stderr: bytes) -> str:
    """What a helper said last on stderr (its error), or that it said nothing."""
    said = stderr.decode("utf-8", "replace").strip().splitlines()
    return said[-1] if said else "no message"
