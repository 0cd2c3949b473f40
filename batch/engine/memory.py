"""Freed memory handed back to the system between a run's stages, so that the next one (the reports)
does not add its own on top of what the last one let go of.

Arrow's pool returns freed pages on its own after a while (see `__main__`), and the C allocator only
from the top of its heap; asking both at once took 3-4 MB off the peak of a 100,000-row run when the
report was drawn in the run's process (it is drawn in one of its own now: `report.html.drawer`), in a
millisecond or two.
"""

from __future__ import annotations

import contextlib
import ctypes

import pyarrow as pa


def give_back() -> None:
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's, without a search
