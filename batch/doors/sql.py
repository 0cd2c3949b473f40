"""The SQL door: `register_duckdb(con, name, ...)` makes `name(prompt)` a function of a DuckDB connection.

    reg = batch.register_duckdb(con, "ask", model="openai/gpt-oss-20b", max_new_tokens=64)
    con.sql("SELECT id, ask('Classify this ticket: ' || body) AS label FROM tickets")
    con.sql("SELECT ask_details(body).cost_usd FROM tickets")   -- text, error, tokens, cost
    reg.close()                                                   -- or: with batch.register_duckdb(...)

Two vectorised (Arrow) functions: `name(prompt VARCHAR) -> VARCHAR`, the answer (NULL where the row
failed), and `name_details(prompt VARCHAR) -> STRUCT(text, error, input_tokens, output_tokens,
cost_usd)`. A NULL prompt is NULL, sent nowhere. The options are `batch.run`'s, validated once here
(`batch.JobError`, nothing sent); the prompt template, if given, names the argument `${prompt}`.
Answers go to the same store `batch.run` would use with the same options (the per-user cache unless
`state=`), so asking again sends nothing, from SQL or from Python.

DuckDB calls the functions from its own threads, a vector (up to 2048 rows) at a time. Each call hands
its vector to the registration's event loop, in a thread of its own, started at the first call: one
`engine.answers.Answering` (one pacer, one client, one store) for every vector and query on the
connection, so they share the limits. The loop ends with `close()`, the end of a `with` block, the
connection being garbage-collected, or the interpreter's exit. Ctrl-C during a query ends it (DuckDB
reports the error) once the requests on the wire are answered and committed: the same query again
pays only for the rest. duckdb is imported here only, and only when a function is registered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from batch.doors.python import prepare  # the very job batch.run builds: same validation, same store
from batch.doors.simulated import endpoint_for
from batch.engine.answers import PROMPT, Answering
from batch.errors import JobError, Stopped
from batch.job import endpoint as endpoints
from batch.job.config import Job
from batch.job.template import Template
from batch.records import Answer
from batch.tables import answered

T = TypeVar("T")
_DOOR = ("state", "simulate", "retry_failed")  # the call's own options (batch.run's, less the output's)
_CALLER = "batch.register_duckdb()"
# The details struct in DuckDB's words (`answered.DETAILS` in Arrow's).
DETAILS_SQL = {"text": "VARCHAR", "error": "VARCHAR", "input_tokens": "BIGINT", "output_tokens": "BIGINT",
               "cost_usd": "DOUBLE"}


def register_duckdb(con: Any, name: str, job: str | Path | None = None, /, **options: Any) -> Registration:
    """Register `name(prompt VARCHAR) -> VARCHAR` and `name_details(prompt VARCHAR) -> STRUCT(...)` on
    the DuckDB connection `con`; the registration back (`close()` it, or use it in a `with` block).

    `job`: an optional job file; `options`: `batch.run`'s (model, system_message, max_new_tokens,
    temperature, requests_per_minute, concurrency, base_url, ..., state=, simulate=True,
    retry_failed=True). `prompt=` defaults to `"${prompt}"`, the argument as it is."""
    import duckdb  # the SQL door's own dependency (`pip install "batch[sql]"`)

    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise JobError(f"{_CALLER}: con: a duckdb connection (duckdb.connect()), got {type(con).__name__}")
    if not name.isidentifier():
        raise JobError(f"{_CALLER}: name: a plain SQL function name (letters, digits, _), got {name!r}")
    reg = Registration(name, *_validated(job, dict(options)), connection=weakref.ref(con))
    # The options as strings: duckdb takes them so from 1.0 on (its enums have moved between versions).
    # Arrow: a vector at a time; "special": a NULL reaches us (and stays NULL, unsent); side effects:
    # never folded into a constant, nor skipped, since every call may send (and bill) a request.
    define: Any = con.create_function
    define(name, reg.text, ["VARCHAR"], "VARCHAR", type="arrow", null_handling="special", side_effects=True)
    define(f"{name}_details", reg.details, ["VARCHAR"], duckdb.struct_type(DETAILS_SQL), type="arrow",
           null_handling="special", side_effects=True)
    # Closed with the connection (when it is collected) and at the interpreter's exit at the latest.
    weakref.finalize(con, reg.close)
    return reg


def _validated(job_file: str | Path | None, options: dict[str, Any]) -> tuple[Job, bool, bool]:
    door = {k: options.pop(k) for k in _DOOR if k in options}
    if job_file is None and options.get("prompt") is None:
        options["prompt"] = "${" + PROMPT + "}"
    no_rows = answered.chunk(PROMPT, [])  # a table of the function's one column: batch.run's checks
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp:
        job = prepare(no_rows, job_file, options, door, Path(tmp), caller=_CALLER).job
    problems = []
    used = Template(job.task.prompt).columns + Template(job.task.system_message or "").columns
    if PROMPT not in used:
        problems.append(f"{_CALLER}: prompt=: must use ${{{PROMPT}}}, the function's argument; without it "
                        "every row asks the same")
    if job.run.mode != "online":
        problems.append(f"{_CALLER}: mode=: a SQL function answers online; leave mode out")
    if problems:
        raise JobError("\n".join(problems))
    simulate = bool(door.get("simulate"))
    if not simulate:
        endpoints.resolve(job, None, os.environ)  # no key, a bad URL: said now, not at the first query
    return job, simulate, bool(door.get("retry_failed"))


class Registration:
    """The functions registered on one connection, and the loop that answers them (started lazily)."""

    def __init__(self, name: str, job: Job, simulate: bool, retry_failed: bool, *,
                 connection: Callable[[], Any] | None = None) -> None:
        self.name, self.details_name, self.job = name, f"{name}_details", job
        self._connection = connection  # weakly: the connection's end is what closes the registration
        self._simulate, self._retry_failed = simulate, retry_failed
        self._lock = threading.Lock()  # DuckDB's threads may make the first call together
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._answering: Answering | None = None
        self._endpoint = contextlib.AsyncExitStack()  # the simulator, when simulate=True
        self._closed = False

    # -- the functions DuckDB calls, from its own threads -------------------------------------------
    def text(self, prompts: Any) -> Any:
        return answered.texts(self.answers(answered.prompts(prompts)))

    def details(self, prompts: Any) -> Any:
        return answered.details(self.answers(answered.prompts(prompts)), self.job.task.model)

    def answers(self, prompts: Sequence[str | None]) -> list[Answer | None]:
        """Each prompt's answer, from the store or the server; the work is done on the loop."""
        loop, answering = self._started()
        return self._wait(loop, answering.answer(prompts))

    # -- the loop ------------------------------------------------------------------------------------
    def _started(self) -> tuple[asyncio.AbstractEventLoop, Answering]:
        with self._lock:
            if self._closed:
                raise Stopped(f"{self.name}: this registration is closed; register the function again")
            if self._loop is None or self._answering is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=f"batch-sql-{self.name}", daemon=True)
                thread.start()
                try:
                    self._answering = self._wait(loop, self._open())
                except BaseException:
                    with contextlib.suppress(BaseException):  # a simulator started before the failure
                        self._wait(loop, self._endpoint.aclose())
                    _stop(loop, thread)
                    raise
                self._loop, self._thread = loop, thread
            return self._loop, self._answering

    async def _open(self) -> Answering:
        ep = await self._endpoint.enter_async_context(
            endpoint_for(self.job, None, os.environ, simulate=self._simulate))
        answering = Answering(self.job, ep, retry_failed=self._retry_failed)
        await answering.open()
        return answering

    @staticmethod
    def _wait(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the loop and wait here. Ctrl-C here cancels it there and waits until it has
        wound down (the requests on the wire answered and committed), then ends the query."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(work)
            tasks.append(task)
            task.add_done_callback(lambda t: _settle(done, t))

        loop.call_soon_threadsafe(start)
        try:
            return done.result()
        except KeyboardInterrupt:
            loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # after `start`: the loop keeps order
            with contextlib.suppress(BaseException):
                done.result()
            raise Stopped("interrupted; the answers received are saved: run the query again to resume "
                          "(it sends only the rows that have no answer yet)") from None

    def close(self) -> None:
        """Commit what is left, record the run in the store, stop the loop, and take the functions off
        the connection (the name may then be registered again)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, answering = self._loop, self._thread, self._answering
        con = self._connection() if self._connection is not None else None
        for name in (self.name, self.details_name):
            # A closed connection has no functions; one with a result still unread refuses (then the
            # functions stay, and refuse to answer: the registration is closed).
            with contextlib.suppress(Exception):
                if con is not None:
                    con.remove_function(name)
        if loop is None or thread is None:
            return
        try:
            if answering is not None:
                self._wait(loop, answering.close())
            self._wait(loop, self._endpoint.aclose())
        finally:
            _stop(loop, thread)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _settle(done: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())


__all__ = ["DETAILS_SQL", "Registration", "register_duckdb"]
