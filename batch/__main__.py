"""`python -m batch`: see batch.cli."""

import sys

from .cli import main

sys.exit(main())
