"""Reading a downloaded result file (output and error files alike): checked whole, then read in parts.

Each line becomes an `Answer`: a 200 is an answer, another status a row error (permanent when
re-sending cannot help, as online), and an expired or cancelled request no answer at all — it stays
pending. A line that is not JSON, or names no request (no string `custom_id`), is unreadable.

A file of 50,000 answers held at once costs about 50 MB, so a file is never held whole: `check` reads
it first (a bad download must merge nothing of its batch), noting where each readable line is, then
`parts` reads it again `PART_LINES` lines at a time, to be merged part by part.
"""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.errors import ApiError, BadRequest, FatalApiError, RequestTooLarge, TransportError
from batch.records import Answer
from batch.send.responses import error_from_response, parse_completion, scrubbed

log = logging.getLogger("batch")

PART_LINES = 2_000  # about 1.5 MB of answers
_decode = json.JSONDecoder().decode  # what json.loads uses, without options
_UNREADABLE = (ValueError, KeyError, TypeError)  # not JSON (or not UTF-8), no custom_id, not a string


def _line(raw: bytes) -> tuple[str, Any]:
    """A result line's custom id and its object; raises one of `_UNREADABLE` if it has none. The
    check and the reading both go through here, so what passed the check is read the same way."""
    # json.loads itself, less its encoding sniffing where the answer is known: a line that opens
    # with "{" and no NUL byte is UTF-8 to json.loads too (no BOM, not UTF-16 or -32).
    fast = raw[:1] == b"{" and raw[1:2] not in (b"\0", b"")
    line = scrubbed(_decode(raw.decode("utf-8", "surrogatepass")) if fast else json.loads(raw), raw)
    fp = line["custom_id"]
    if not isinstance(fp, str):
        raise TypeError("custom_id is not a string")
    return fp, line


@dataclass
class Checked:
    """What checking a file found: its unreadable lines, and where its readable lines are, as parts of
    at most `PART_LINES` lines in the order of their custom ids (ranges of the store's key)."""

    unreadable: int = 0
    parts: list[tuple[array[int], array[int]]] = field(default_factory=list)  # (offsets, lengths)


def check(path: Path, lines: int = PART_LINES) -> Checked:
    """Count (and log) the file's unreadable lines, and group the others for `parts`."""
    out = Checked()
    by_key: dict[str, tuple[array[int], array[int]]] = {}
    at = 0
    with path.open("rb") as f:
        for raw in f:
            start, at = at, at + len(raw)
            if not raw.strip():
                continue
            try:
                fp, _ = _line(raw)
            except _UNREADABLE as exc:
                out.unreadable += 1
                log.warning("batch: skipped an unreadable line of %s (%s)", path.name, exc)
                continue
            offsets, sizes = by_key.setdefault(fp[:2], (array("q"), array("q")))
            offsets.append(start)
            sizes.append(len(raw))
    # Why by key: each part goes into the store in one transaction, and a part of ids from all over the
    # key space rewrites pages all over the table, every part again (at 5,000 lines a part, 29 µs a
    # line to check, read and store, against 22 by key); a part of neighbouring ids writes its own
    # stretch of pages, once. Grouping by the first two characters suits hex fingerprints; any other
    # ids still come out whole, only slower to store.
    part: tuple[array[int], array[int]] = (array("q"), array("q"))
    for key in sorted(by_key):
        for start, size in zip(*by_key.pop(key), strict=True):
            part[0].append(start)
            part[1].append(size)
            if len(part[0]) == lines:
                out.parts.append(part)
                part = (array("q"), array("q"))
    if part[0]:
        out.parts.append(part)
    return out


@dataclass
class Part:
    """Lines of a result file: their answers, and the requests they left unanswered."""

    answers: list[Answer] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # expired or cancelled: still to be asked


def parts(path: Path, checked: Checked) -> Iterator[Part]:
    """The file's readable lines, part by part as `check` grouped them (lines with the same custom id
    stay in file order: the last one is the one the store keeps)."""
    with path.open("rb", buffering=0) as f:  # unbuffered: each read is one line, wherever it is
        for offsets, sizes in checked.parts:
            part = Part()
            for start, size in zip(offsets, sizes, strict=True):
                f.seek(start)
                fp, line = _line(f.read(size))  # it passed the check: it reads
                answer = _answer(fp, line)
                if answer is None:
                    part.unanswered.append(fp)
                else:
                    part.answers.append(answer)
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
