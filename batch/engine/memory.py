"""Freed memory handed back to the system: before pass 2 (what pass 1 freed, so that pass 2's own peak
does not stand on it) and by the committing thread every 10,000 answers (`commits`).

Arrow's pool returns freed pages on its own after a while (see `__main__`), and the C allocator only
from the top of each arena's heap; the commits' rows and JSON left the arenas holding 10-15 MB by the
end of pass 1 in some 100,000-row runs. Asking both takes a millisecond or two.
"""

from __future__ import annotations

import contextlib
import ctypes

import pyarrow as pa


def give_back() -> None:
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's, without a search
