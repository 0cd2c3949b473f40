"""The one error tree of batch; exit codes hang off it.

    BatchError                      exit 1 unless a subclass says otherwise
    ├── JobError (a ValueError)     exit 2: the job or its input is invalid; nothing was sent
    │   ├── ConfigError             the job file (every problem at once, each with file/table/key)
    │   └── InputError              the input table (missing file, missing template column, ...)
    ├── Stopped                     exit 3: stopped early, resumable (signal, daily quota)
    │   └── QuotaReached            a daily quota is spent (a cluster stops every worker)
    └── ApiError                    what the API said about one request (raised by `client` only)
        ├── TransportError          no usable HTTP answer: connection dropped, timeout, malformed body
        ├── RateLimited             429: carries which limit (rpm/tpm/rpd/tpd) and how long to wait
        ├── RequestTooLarge         413: larger than the tokens-per-minute limit; retrying cannot help
        ├── ServerError             5xx and 498 (flex capacity): worth retrying
        ├── BadRequest              400/404/422 about this row: not worth retrying
        └── FatalApiError           exit 4: the same for every row (bad key, model gone): ends the run
            └── ModelUnavailable    404 model_not_found / 400 model_decommissioned

`client` translates every aiohttp exception and HTTP status into one of these exactly once
(`raise ... from exc`); `retry` decides what each class means; nothing above `client` inspects
message text to classify an error. Messages never contain the API key: the client never puts
request headers into an error.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0  # every row answered
EXIT_ROWS_FAILED = 1  # finished; some rows failed (the output has every row, with its error)


class BatchError(Exception):
    """Base of every error batch raises on purpose."""

    exit_code = 1
    # set once the run's ending is in its metrics file and trace (`engine.drive`): a door that sees
    # the error go by records a refusal only when it was not (`doors.watching.refused`)
    recorded = False


class JobError(BatchError, ValueError):
    """The job cannot succeed as written; raised before any request is sent. A ValueError, so that
    code calling the Python API can treat invalid options like any other invalid argument."""

    exit_code = 2


class ConfigError(JobError):
    """Every problem found in a job file, reported together."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class InputError(JobError):
    """The input table cannot be used by this job."""


class Stopped(BatchError):
    """The run stopped before every row was answered; re-running the command resumes it.

    From the Python API, `partial` holds the rows so far in the caller's kind (answered rows with their
    answers, the others with an error saying they have none yet), and `reason` the message."""

    exit_code = 3

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial: object = None


class QuotaReached(Stopped):
    """A daily quota is used up; the run resumes after it resets."""


class ApiError(BatchError):
    """One request's failure, as the API (or the wire) reported it."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.param = param  # the request field the server named as the problem ("response_format.type")
        super().__init__(self.describe())

    def describe(self) -> str:
        """A one-line form for logs and the output's `error` column."""
        parts = [str(self.status)] if self.status is not None else []
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        return f"{head}: {self.message}" if head else self.message


class TransportError(ApiError):
    """No usable answer: the connection failed or dropped, the request timed out, or the body was not JSON."""


class RateLimited(ApiError):
    """429. `limit` is "rpm", "tpm", "rpd", "tpd" or None when the body does not say."""

    def __init__(self, message: str, *, limit: str | None = None, limit_value: float | None = None,
                 **kw: object) -> None:
        self.limit = limit
        self.limit_value = limit_value  # the "Limit N" the body states, when it does
        super().__init__(message, **kw)  # type: ignore[arg-type]

    @property
    def daily(self) -> bool:
        """A daily limit means 'stop for today', not 'retry in a moment'."""
        return self.limit in ("rpd", "tpd")


class RequestTooLarge(ApiError):
    """413: the request alone exceeds a per-minute token limit."""


class ServerError(ApiError):
    """5xx, or 498 (flex tier capacity exceeded)."""


class BadRequest(ApiError):
    """The server rejected this row's request (400, 404, 422, ...)."""


class FatalApiError(ApiError):
    """A condition that is the same for every row: continuing would only fail every row."""

    exit_code = 4


class ModelUnavailable(FatalApiError):
    """The model does not exist or was decommissioned."""
