"""`python -m batch`: see batch.cli."""

import os
import sys

# Before pyarrow loads, which reads it once: jemalloc hands freed memory back to the system; pyarrow's
# default (mimalloc) and the C allocator kept 55-80 MB more at the peak of a 100,000-row run.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

from .cli import main

sys.exit(main())
