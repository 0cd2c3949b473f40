"""Reading a downloaded result file (output and error files alike): checked whole, then read in parts.

Each line becomes an `Answer`: a 200 is an answer, another status a row error (permanent when
re-sending cannot help, as online), and an expired or cancelled request no answer at all — it stays
pending. A line that is not JSON, or names no request (no string `custom_id`), is unreadable.

A file of 50,000 answers held at once costs about 50 MB, so a file is never held whole:
`unreadable_lines` checks it first (a bad download must merge nothing of its batch), then `parts`
reads it `PART_LINES` lines at a time, to be merged part by part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ApiError, BadRequest, FatalApiError, RequestTooLarge, TransportError
from ..records import Answer
from ..responses import error_from_response, parse_completion

log = logging.getLogger("batch")

PART_LINES = 5_000  # about 5 MB of answers, and few enough transactions: see `parts`
_decode = json.JSONDecoder().decode  # what json.loads uses, without options
_UNREADABLE = (ValueError, KeyError, TypeError)  # not JSON (or not UTF-8), no custom_id, not a string


def _line(raw: bytes) -> tuple[str, Any]:
    """A result line's custom id and its object; raises one of `_UNREADABLE` if it has none. The
    check and the reading both go through here, so what passed the check is read the same way."""
    # json.loads itself, less its encoding sniffing where the answer is known: a line that opens
    # with "{" and no NUL byte is UTF-8 to json.loads too (no BOM, not UTF-16 or -32).
    fast = raw[:1] == b"{" and raw[1:2] not in (b"\0", b"")
    line = _decode(raw.decode("utf-8", "surrogatepass")) if fast else json.loads(raw)
    fp = line["custom_id"]
    if not isinstance(fp, str):
        raise TypeError("custom_id is not a string")
    return fp, line


def unreadable_lines(path: Path) -> int:
    """How many lines of the file are unreadable (each is logged); blank lines are not counted."""
    bad = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                _line(raw)
            except _UNREADABLE as exc:
                bad += 1
                log.warning("batch: skipped an unreadable line of %s (%s)", path.name, exc)
    return bad


@dataclass
class Part:
    """Consecutive lines of a result file: their answers, and the requests they left unanswered."""

    answers: list[Answer] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # expired or cancelled: still to be asked


def parts(path: Path, lines: int = PART_LINES) -> Iterator[Part]:
    """The file's lines, `lines` at a time; unreadable lines are skipped (`unreadable_lines` has
    already counted and logged them)."""
    part, n = Part(), 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                fp, line = _line(raw)
            except _UNREADABLE:
                continue
            answer = _answer(fp, line)
            if answer is None:
                part.unanswered.append(fp)
            else:
                part.answers.append(answer)
            n += 1
            if n == lines:
                yield part
                part, n = Part(), 0
    if n:
        yield part


def _answer(fp: str, line: dict[str, object]) -> Answer | None:
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
        if status == 200:
            try:  # the line's request id stands where the online answer's x-request-id header would
                c = parse_completion(body, {"x-request-id": request_id} if request_id else {}, rate=False)
            except TransportError as exc:
                return Answer.failure(fp, f"Batch API: {exc}", permanent=False, attempts=1,
                                      request_id=request_id)
            return Answer.from_completion(fp, c, attempts=1, latency_s=None)
        err = error_from_response(status, json.dumps(body).encode(), {})
        return Answer.failure(fp, f"Batch API: {_describe(err)}", permanent=_permanent(err), attempts=1,
                              request_id=request_id)
    code = error.get("code") if isinstance(error, dict) else None
    if code in ("batch_expired", "batch_cancelled"):
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return Answer.failure(fp, f"Batch API: {message or code or 'no response for this request'}",
                          permanent=False, attempts=1)


def _permanent(exc: ApiError) -> bool:
    # As online: re-sending the same request cannot fix a 400/413 or a refused model.
    return isinstance(exc, BadRequest | RequestTooLarge | FatalApiError)


def _describe(exc: ApiError) -> str:
    text = str(exc)
    return text if not exc.status or text.startswith((str(exc.status), "HTTP")) else f"{exc.status}: {text}"
