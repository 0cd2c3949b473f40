"""Headless Chromium, for looking at the HTML report as a browser does: its DOM, and a screenshot.

Every call starts a fresh browser with a fresh profile, no network helpers (no QUIC, no component or
sync updates, no background requests) and a host resolver that resolves nothing, so a page that
tried to fetch anything from anywhere would find nothing there.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND")


def executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    exe = executable()
    assert exe is not None, "chromium is not installed (apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(page: Path) -> str:
    """The page's DOM after loading, as the browser serialises it."""
    proc = _run(page, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(page: Path, png: Path, *, width: int = 1100, height: int = 2400) -> Path:
    """A PNG of the top `height` pixels of the page at `width` pixels wide."""
    png.unlink(missing_ok=True)
    proc = _run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}")
    assert png.exists() and png.stat().st_size > 0, proc.stderr[-2000:]
    return png
