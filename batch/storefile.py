"""The store's file on disk: who may open it (an exclusive run lock, or a brief opening lock for a
store several processes share), and the errors of opening and writing it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import JobError, Stopped


class StoreError(JobError):
    """The state file is unusable or busy; the message says what to do."""


class StoreWriteError(Stopped):
    """Answers could not be committed (disk full, file too large, read-only): the run stops (exit 3).
    Every answer committed before is kept, and the uncommitted ones stay buffered, so a later flush
    (after space was freed) or the next run can still save or re-ask them."""

    def __init__(self, path: Path, exc: Exception) -> None:
        super().__init__(f"could not save answers to the state {path} ({exc}); every answer committed "
                         "before is kept. Free space (or make it writable), then run the same command: it "
                         "sends only what has no answer yet.")


def lock_opening(path: Path) -> int:
    """A lock held only while a shared store is opened (waits for another process's opening)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.opening", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def lock_exclusive(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"another run is using {path} right now (lock {path}.lock is held); "
                         "wait for it to finish, or stop it first") from None
    return fd
