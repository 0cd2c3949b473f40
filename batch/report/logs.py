"""Log lines on stderr, in the format the job asks for (`--log-format`, `[run] log-format`): compact text
(`12:03:04 batch INFO ...`), or one JSON object a line for a log shipper.

A JSON line has `time` (ISO 8601, UTC), `level`, `message` and `job` (the job file's stem), plus the
fields the line is about when it has them: `row` (1-based input row), `attempt`, `status` (the HTTP
status) and `wait` (seconds before the retry). A line gets them from the `extra=` of its log call
(`about(...)`); the final summary adds `summary`, the report's figures.

The API key never reaches a log line: the client never puts it in an error, and blots it out of any
body a server echoes (`send.client`). The handler blots it out once more, whatever the format, in
case a message ever carries it from somewhere else.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FIELDS = ("row", "attempt", "status", "wait", "summary")  # `extra=` names a JSON line carries


def about(row: int | None = None, attempt: int | None = None, status: int | None = None,
          wait: float | None = None) -> dict[str, Any]:
    """The `extra=` of a log call about one request: what a JSON line carries as fields of its own."""
    given = {"row": row, "attempt": attempt, "status": status,
             "wait": None if wait is None else round(wait, 3)}
    return {k: v for k, v in given.items() if v is not None}


class JsonLines(logging.Formatter):
    def __init__(self, job: str) -> None:
        super().__init__()
        self.job = job

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "message": record.getMessage(), "job": self.job}
        line |= {k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class BlotKey(logging.Filter):
    """The key, wherever a formatted message holds it, as `***`."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), None
        if record.exc_info and not record.exc_text:  # a traceback's text, formatted once, blotted
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and self.secret in record.exc_text:
            record.exc_text = record.exc_text.replace(self.secret, "***")
        return True


def stderr_handler(log_format: str = "text", job: str = "", secret: str | None = None) -> logging.Handler:
    """Every door's log lines on stderr: text (`12:03:04 batch INFO ...`) or JSON; `secret`, if given,
    blotted out of them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(job) if log_format == "json"
                         else logging.Formatter("%(asctime)s batch %(levelname)s %(message)s", "%H:%M:%S"))
    if secret:
        handler.addFilter(BlotKey(secret))
    return handler


def say(handler: logging.Handler, text: str, **fields: Any) -> None:
    """A line that is shown whatever the level (the final summary): plain text, or one JSON line."""
    if not isinstance(handler.formatter, JsonLines):
        print(text, file=sys.stderr)
        return
    record = logging.makeLogRecord({"name": "batch", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": text, **fields})
    handler.handle(record)
