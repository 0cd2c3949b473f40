"""batch: run a prompt over every row of a table against Groq, at the account's rate limits.

    import batch
    out = batch.run(df, model="openai/gpt-oss-20b", prompt="Summarize: ${body}", max_new_tokens=64)

`run`, `arun` and `plan` are the Python door (`batch.doors.python`), `register_duckdb` the SQL door
(`batch.doors.sql`: a DuckDB function), `python -m batch` the command line. Each is imported on first
use, so that `python -m batch` pays only for what it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch.errors import FatalApiError, JobError, Stopped

if TYPE_CHECKING:
    from batch.doors.python import arun, plan, run
    from batch.doors.sql import register_duckdb

__version__ = "0.1.0"
__all__ = ["FatalApiError", "JobError", "Stopped", "__version__", "arun", "plan", "register_duckdb", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "arun", "plan"):
        from batch.doors import python as door

        return getattr(door, name)
    if name == "register_duckdb":
        from batch.doors import sql

        return sql.register_duckdb
    raise AttributeError(f"module 'batch' has no attribute {name!r}")
