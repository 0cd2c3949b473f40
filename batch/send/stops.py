"""What ends a run from inside the pool, besides a signal: a spent daily quota, and the breaker.

Groq's `x-ratelimit-*-requests` headers count the DAY's requests: when none is left, the run stops
cleanly (exit 3) rather than collect 429s; a quota that refills within minutes (OpenAI-style servers,
whose same headers count per minute) is waited out instead. The breaker: until a first success,
the same permanent rejection again and again (same status and code) means the job, not its rows,
is wrong for this server (say, max-new-tokens above the model's maximum); after one success, a
rejection is only that row's failure. Sooner still, before any success, a refusal that names a field
every request carries alike (anything but the row's own `messages`: `response_format` to a server
that spells it otherwise) ends the run at once, and leaves the rows it refused unanswered, so the run
that follows the fix sends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from batch.errors import ApiError, BadRequest, FatalApiError
from batch.send.pacing import Pacing

REJECTIONS_TO_STOP = 10  # identical permanent rejections, before any success, that end the run
SHORT_RESET_S = 900.0  # a spent request quota that resets sooner than this is waited out, not quit
# Codes that name a field but speak of one row's answer or size, not of the request's shape.
ROW_CODES = frozenset({"json_validate_failed", "context_length_exceeded"})
# The job's setting behind each field a request may carry besides `messages`.
SETTINGS = {"model": "[task] model", "response_format": "[task] response-format",
            "max_completion_tokens": "[task] max-new-tokens", "max_tokens": "[api] send-max-tokens",
            "temperature": "[task] temperature", "top_p": "[task] top-p", "seed": "[task] seed",
            "user": "[task] user", "stop": "[task] stop", "reasoning_effort": "[task] reasoning-effort",
            "reasoning_format": "[task] reasoning-format", "include_reasoning": "[task] include-reasoning",
            "service_tier": "[task] service-tier"}


@dataclass(frozen=True, slots=True)
class Quota:
    """A daily quota ran out: which one ("rpd", "tpd") and, when known, seconds until it resets."""

    limit: str
    reset_s: float | None


def daily_quota(remaining: int | None, reset_s: float | None, pacer: Pacing) -> Quota | None:
    """The quota spent, from one answer's headers; a short reset only cools the pacer down. The pool
    stops when the next request would need the quota; if none does, the run completes."""
    if remaining != 0:
        return None
    if reset_s is not None and reset_s <= SHORT_RESET_S:
        pacer.cool_down(reset_s)
        return None
    return Quota("rpd", reset_s)


class Breaker:
    """Counts identical permanent rejections while nothing has succeeded; judges refused request shapes."""

    def __init__(self) -> None:
        self._successes = 0
        self._taken = 0  # 200s, with or without an answer
        self._streak = 0  # identical permanent rejections in a row, while nothing succeeded
        self._kind: tuple[int | None, str | None] = (None, None)

    def succeeded(self, ok: bool) -> None:
        """A 200 came back (`ok`: with an answer); either way the server took the request's shape."""
        self._successes += ok
        self._taken += 1

    def rejected(self, exc: ApiError) -> FatalApiError | None:
        """A permanent rejection; the error that ends the run, once the streak is long enough."""
        if self._successes:
            return None
        kind = (exc.status, exc.code)
        self._streak = self._streak + 1 if kind == self._kind else 1
        self._kind = kind
        if self._streak < REJECTIONS_TO_STOP:
            return None
        return FatalApiError(f"the first {self._streak} requests were all rejected the same way, so the "
                             f"job's settings are likely wrong for this server (last: {exc.describe()})",
                             status=exc.status, code=exc.code)

    def judged(self, exc: ApiError) -> ApiError:
        """`exc`, or, before any success, the FatalApiError that ends the run when the server refused a
        field that every request carries alike: the same request shape would be refused on every row."""
        top = (exc.param or "").split(".")[0]
        if self._taken or not isinstance(exc, BadRequest) or exc.code in ROW_CODES or \
                top in ("", "messages"):
            return exc
        setting = SETTINGS.get(top, "the job setting that sends it")
        hint = ('set [api] server to the kind of server it is (for llama.cpp\'s servers, [api] server = '
                '"llama.cpp": structured output then goes as {type: json_object, schema}), or change '
                "[task] response-format" if top == "response_format" else
                f"change {setting}, or set [api] server to the kind of server it is")
        said = " ".join(exc.describe().split())  # a server's message may hold a traceback's lines
        said = said if len(said) <= 300 else said[:297] + "..."
        return FatalApiError(f"the server refuses the requests' {top!r} field ({said}); every "
                             "request carries it alike, so the run stops here instead of failing every "
                             f"row. To fix it, {hint}. The rows refused are not stored: the next run sends "
                             "them", status=exc.status, code=exc.code, param=exc.param)
