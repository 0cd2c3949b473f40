"""Helper processes of batch's own (`python -m batch.report.<module>`): the OTLP exporter (`otlp`) and
the report's drawing (`html.draw`). `spawn` starts one, `ask` hands it its one document on stdin and
waits (bounded) for what it answers, `end` kills and reaps one that will not be asked.

Each gets the run's environment without the API key (it has no use for it), the folder batch was
imported from on its path (so that the same batch answers `-m`), and a session of its own: a
terminal's Ctrl-C, sent to the run's whole process group, is the run's to handle (it stops, exit 3,
and still writes its report and exports how it ended).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REAP_S = 10.0  # for a killed helper to be gone (at once, in practice)


class HelperFailed(Exception):
    """A helper did not answer: it ran past its deadline, or died before reading its document."""


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


def ask(proc: subprocess.Popen[bytes], document: bytes, timeout_s: float, what: str) -> tuple[bytes, bytes]:
    """Send `document`, wait at most `timeout_s`; (stdout, stderr). Raises HelperFailed (the helper
    killed and reaped), its message naming the helper as `what`."""
    try:
        out, err = proc.communicate(document, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end(proc)
        raise HelperFailed(f"{what} did not answer within {timeout_s:g}s") from None
    except OSError as exc:  # it died before reading (a broken pipe): what it said is in stderr
        raise HelperFailed(f"{what} ended early ({exc}): {last_line(end(proc))}") from None
    return out, err


def end(proc: subprocess.Popen[bytes]) -> bytes:
    """Kill it, reap it, close its pipes; what it said on stderr."""
    proc.kill()
    err = b""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
        err = proc.communicate(timeout=REAP_S)[1] or b""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return err
