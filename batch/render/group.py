"""What rendering hands on: a group of rendered rows (each one's fingerprint, or why it failed, and its
request on demand), the one JSON encoder of request bodies, the fingerprint of a body, and the face of
a row-by-row renderer that the columnar path falls back on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from batch.job.template import Template
from batch.records import Request

# One encoder for every row (json.dumps builds a new one per call); the same bytes as
# json.dumps(..., ensure_ascii=False, separators=(",", ":")), so fingerprints do not change.
JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def packed(fp: str) -> str:
    """The fingerprint of a row that is asked inside a pack (`[task] rows-per-request` > 1) rather than
    alone: the same row asked the other way is another question, so neither way takes the other's
    stored answer, while packs of any size share theirs (the pack is how it travels, not what it asks)."""
    return fingerprint(b"rows-per-request\x00" + fp.encode())


@dataclass(frozen=True, slots=True)
class RowFailure:
    """A row that cannot become a request; `error` goes to the output's error column."""

    row: int
    error: str


Rendered = Request | RowFailure


class Group:
    """Consecutive rows rendered: each row's fingerprint (None where the row failed, with its
    message in `errors`), and each row's request, built on demand (`request(i)`)."""

    __slots__ = ("_request", "errors", "fingerprints", "first_row")

    def __init__(self, first_row: int, fingerprints: list[str | None], errors: list[str | None],
                 request: Callable[[int], Request]) -> None:
        self.first_row, self.fingerprints, self.errors = first_row, fingerprints, errors
        self._request = request

    def __len__(self) -> int:
        return len(self.fingerprints)

    def request(self, i: int) -> Request:
        """The request of the group's row `i` (0-based within the group); only for rows that did not fail."""
        return self._request(i)

    @classmethod
    def of(cls, first_row: int, rendered: list[Rendered]) -> Group:
        fps = [r.fingerprint if isinstance(r, Request) else None for r in rendered]
        errors = [r.error if isinstance(r, RowFailure) else None for r in rendered]

        def request(i: int) -> Request:
            r = rendered[i]
            assert isinstance(r, Request), "a failed row has no request"
            return r
        return cls(first_row, fps, errors, request)


class RowRenderer(Protocol):
    """What the columnar path needs of the row-by-row renderer (`prompts.Renderer`): its templates and
    parameters to build the same bytes, and the row path for the rows it leaves to it."""

    model: str
    prompt: Template
    system: Template | None
    params: dict[str, Any]
    template_columns: list[str]
    columns: list[str]
    history_column: str | None
    images_column: str | None
    completion_budget: int
    packs: bool  # rows of text are asked in packs: their fingerprints are `packed`
    alias: bytes | None
    cut: int

    def row(self, row: int, cols: dict[str, list[Any]], i: int) -> Rendered: ...
