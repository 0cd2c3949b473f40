"""The state of the simulator's Batch API: stored files, and each batch's lifecycle and results.

This module owns what a file and a batch are (:class:`SimFile`, :class:`SimBatch`, and their JSON as
Groq shows them) and how a batch lives: validating, failed, in_progress, finalizing, completed,
expired, cancelling, cancelled. The lifecycle runs on no background task: it is a pure function of
the simulator's clock (:meth:`SimBatch.advance`), brought up to date whenever a batch or a file is
asked for. A batch validates for ``batch_validate_s``, then answers its lines one by one, in a seeded
random order, at ``batch_lines_per_s``; its completion window lasts the window divided by
``batch_time_scale`` in real seconds; it finalizes for ``batch_finalize_s``. Once it is terminal,
:meth:`SimBatch.results` gives the lines of its output and error files. An answer is the body the
online route would send for the same request (same text, same usage; a pack answered item by item,
with the pack faults drawn for it when the batch was created), so a test can hold both routes to one
standard.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from .answers import answer, chat_completion, usage_block
from .batchinput import ENDPOINT, Line

ENDED = frozenset(("failed", "completed", "expired", "cancelled"))
_EXPIRED = {"code": "batch_expired",
            "message": "This request could not be executed before the completion window expired."}
_SERVER_ERROR = {"error": {"message": "Internal Server Error", "type": "internal_server_error"}}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:26]


@dataclass
class SimFile:
    """An uploaded input file (purpose ``batch``) or a batch's output or error file (``batch_output``)."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose}


@dataclass
class SimBatch:
    """One batch. Its schedule is fixed when it is created; `advance` derives the state at a moment."""

    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float  # on the simulator's clock
    created_wall: float  # time.time() at the same moment, to turn clock moments into unix seconds
    lines: list[Line]  # the valid lines in the order they are answered (random); empty if validation failed
    faulty: list[bool]  # by answering position: that line gets a 500 instead of an answer
    damage: list[tuple[str | None, ...]]  # by answering position: the pack faults of its items (.packs)
    total: int  # lines in the input file
    validation_errors: list[dict[str, Any]]
    validate_s: float
    lines_per_s: float
    finalize_s: float
    window_s: float  # real seconds
    empty_error_file_id: bool = False  # Groq's quirk: `"error_file_id": {}` once it ended without one
    cancel_at: float | None = None
    status: str = "validating"
    answered: int = 0  # lines taken from `lines` so far, in order; faulty ones included
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False  # terminal, and its files exist: nothing will change any more
    stamps: dict[str, float] = field(default_factory=dict)  # event -> moment on the clock
    _failures: list[int] = field(default_factory=list)  # prefix sums of `faulty`

    def __post_init__(self) -> None:
        self._failures = list(itertools.accumulate(self.faulty, initial=0))

    @property
    def started(self) -> float:
        return self.created + self.validate_s

    def done_at(self, position: int) -> float:
        """When the line at this answering position is answered."""
        return self.started + (position + 1) / self.lines_per_s

    def wall(self, moment: float) -> int:
        return int(self.created_wall + (moment - self.created))

    def _answered_by(self, moment: float) -> int:
        return max(0, min(len(self.lines), math.floor((moment - self.started) * self.lines_per_s)))

    def advance(self, now: float) -> None:
        """Bring status, stamps and counts to `now`."""
        if self.settled:
            return
        started, n = self.started, len(self.lines)
        if self.cancel_at is not None:
            self.stamps["cancelling"] = self.cancel_at
            if self.cancel_at >= started:
                self.stamps["in_progress"] = started
            self.answered = self._answered_by(self.cancel_at)  # lines stop being answered at the cancel
            self.status = "cancelling"
            if now >= self.cancel_at + self.finalize_s:
                self.status, self.stamps["cancelled"] = "cancelled", self.cancel_at + self.finalize_s
        elif now < started:
            self.status = "validating"
        elif self.validation_errors:
            self.status, self.stamps["failed"] = "failed", started
        else:
            self.stamps["in_progress"] = started
            last = started + n / self.lines_per_s
            expires = max(self.created + self.window_s, started)
            if last <= expires and now >= last:
                # Set, not computed: floating point could leave the last line a hair short of its moment.
                self.answered, self.status, self.stamps["finalizing"] = n, "finalizing", last
                if now >= last + self.finalize_s:
                    self.status, self.stamps["completed"] = "completed", last + self.finalize_s
            elif last > expires and now >= expires:
                self.answered, self.status = self._answered_by(expires), "expired"
                self.stamps["expired"] = expires
            else:
                self.answered, self.status = self._answered_by(now), "in_progress"
        self.failed = self._failures[self.answered]
        self.completed = self.answered - self.failed
        if self.status == "expired":
            self.failed += n - self.answered  # expired lines are in the error file: they count as failed

    def to_json(self) -> dict[str, Any]:
        def at(event: str) -> int | None:
            moment = self.stamps.get(event)
            return None if moment is None else self.wall(moment)

        counted = "in_progress" in self.stamps or self.status == "failed"  # Groq shows 0 while validating
        quirk = self.settled and self.error_file_id is None and self.empty_error_file_id
        errors: str | dict[str, Any] | None = {} if quirk else self.error_file_id
        return {
            "id": self.id, "object": "batch", "endpoint": ENDPOINT,
            "errors": {"object": "list", "data": self.validation_errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": errors,
            "created_at": int(self.created_wall), "in_progress_at": at("in_progress"),
            "expires_at": self.wall(self.created + self.window_s), "finalizing_at": at("finalizing"),
            "completed_at": at("completed"), "failed_at": at("failed"), "expired_at": at("expired"),
            "cancelling_at": at("cancelling"), "cancelled_at": at("cancelled"),
            "request_counts": {"total": self.total if counted else 0, "completed": self.completed,
                               "failed": self.failed},
            "metadata": self.metadata,
        }

    def results(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The lines of the output and error files: an answer or a 500 for each line answered, and an
        expiry error for each line that an expired batch did not reach."""
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for position, line in enumerate(self.lines[: self.answered]):
            request_id = new_id("req_")
            if self.faulty[position]:
                response = {"status_code": 500, "request_id": request_id, "body": _SERVER_ERROR}
                errors.append({"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": response,
                               "error": None})
                continue
            text, completion, finish = answer(line.body, line.cap, self.damage[position])
            # Queue time is the wait for its turn; no decoding latency is simulated, as online at latency 0.
            usage = usage_block(line.model, line.prompt, completion, position / self.lines_per_s, 0.0)
            body = chat_completion(line.model, text, finish, usage, request_id,
                                   self.wall(self.done_at(position)))
            output.append({"id": new_id("batch_req_"), "custom_id": line.custom_id,
                           "response": {"status_code": 200, "request_id": request_id, "body": body},
                           "error": None})
        if self.status == "expired":
            errors += [{"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": None,
                        "error": dict(_EXPIRED)} for line in self.lines[self.answered:]]
        return output, errors
