"""`python -m batch`: see batch.doors.cli."""

import logging
import os
import sys

# Before pyarrow loads, which reads it once: jemalloc hands freed memory back to the system; pyarrow's
# default (mimalloc) and the C allocator kept 55-80 MB more at the peak of a 100,000-row run.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
# One arena instead of one per reader thread, and a background thread that returns freed pages after
# 100 ms instead of Arrow's 1 s on the allocating thread: 30 MB less at the peak of a 100,000-row run,
# at no cost in time (bench/RESULTS.md). Arrow's jemalloc reads this name, not MALLOC_CONF.
os.environ.setdefault("JE_ARROW_MALLOC_CONF",
                      "narenas:1,background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0")

from batch.doors.cli import main

code = main()
# By now every file the command wrote is closed and synced. Tearing the interpreter down (pyarrow,
# aiohttp and their thousands of objects) takes another 0.15-0.2 s that no one waits for
# gladly, so flush what is buffered and leave; if a flush fails (a closed pipe), exit the usual way.
try:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
except Exception:
    sys.exit(code)
os._exit(code)
