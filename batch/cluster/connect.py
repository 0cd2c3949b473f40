"""Reaching a Dask cluster: a scheduler's address, or a LocalCluster on 127.0.0.1 for `local[:N]`.

Whatever answers at the address, the run either gets a client within `CONNECT_TIMEOUT_S` or stops with
a JobError (exit 2) that says what was found, and a signal stops the wait at once (`Stopped`, exit 3).
Dask's client alone does not give that: its `timeout` bounds the TCP connect but not the handshake, so
a port that accepts and never speaks holds it forever; a server of another protocol (the dashboard's
HTTP port) has its answer read as a frame length, and numpy is asked for exabytes; `tls://` without
TLS settings is a TypeError. Hence the outer deadline, every exception translated here, and the TLS
settings checked before anything is tried.

`interruptible` is the same guard for any other wait of the run (the workers to appear, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from distributed import Client, LocalCluster
from distributed.security import Security

from batch.errors import JobError, Stopped

log = logging.getLogger("batch.cluster")

CONNECT_TIMEOUT_S = 5.0  # README: "a scheduler that cannot be reached (5 s)"
CLOSE_TIMEOUT_S = 2.0  # closing a client that never connected must not become the next wait
T = TypeVar("T")


# A LocalCluster for `local` / `local:N`: worker processes of one thread each, on loopback only, the
# scheduler's HTTP endpoint on a free loopback port (not the usual 8787).
LOCAL_CLUSTER = {"processes": True, "threads_per_worker": 1, "host": "127.0.0.1",
                 "dashboard_address": "127.0.0.1:0"}


def local_workers(address: str) -> int | None:
    """The N of `local:N` (None for `local`: Dask's default)."""
    return int(address.split(":")[1]) if ":" in address else None


class Interrupted(Exception):
    """A signal came while the run was waiting."""


async def interruptible(work: Awaitable[T], interrupted: asyncio.Event, timeout: float | None = None) -> T:
    """`work`, unless `interrupted` is set first (Interrupted) or `timeout` passes (TimeoutError); either
    way `work` is cancelled and waited for."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():  # a signal, the deadline, or this wait itself cancelled (a second signal)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Interrupted() if interrupted.is_set() else TimeoutError()
    return task.result()


@contextlib.asynccontextmanager
async def connect(address: str, interrupted: asyncio.Event) -> AsyncIterator[Client]:
    """A client of the scheduler at `address`, or of a LocalCluster started for `local` / `local:N`."""
    if address.startswith("local"):
        # Its start is not cancelled by a signal (that could leave worker processes behind); the run
        # stops as soon as it is up.
        async with LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=local_workers(address), asynchronous=True, **LOCAL_CLUSTER) as cluster, \
                Client(cluster, asynchronous=True) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    client = await _reach(address, interrupted)
    try:
        yield client
    finally:
        await _close(client)


async def _reach(address: str, interrupted: asyncio.Event) -> Client:
    security = _security(address)
    try:
        # Dask's own timeout a little inside ours: when it gives up first, its message says more.
        client = Client(address, asynchronous=True, timeout=CONNECT_TIMEOUT_S * 0.8,  # type: ignore[no-untyped-call]
                        security=security)
    except Exception as exc:
        raise JobError(_unreachable(address, exc)) from None
    try:
        await interruptible(_started(client), interrupted, CONNECT_TIMEOUT_S)
    except Interrupted:
        await _close(client)
        raise Stopped(f"interrupted while connecting to the Dask scheduler at {address}; nothing was sent. "
                      "Run the same command again to start the run.") from None
    except Exception as exc:  # whatever the other end made of Dask's handshake
        await _close(client)
        raise JobError(_unreachable(address, exc)) from None
    return client


async def _started(client: Client) -> None:
    await client


async def _close(client: Client) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(_closing(client), CLOSE_TIMEOUT_S)


async def _closing(client: Client) -> None:
    await client.close()  # type: ignore[no-untyped-call]


def _security(address: str) -> Security | None:
    """Dask's TLS settings for a tls:// or wss:// address, from its configuration; refused without."""
    if not address.startswith(("tls://", "wss://")):
        return None
    try:
        security = Security()  # type: ignore[no-untyped-call]
        context = security.get_connection_args("client").get("ssl_context")  # type: ignore[no-untyped-call]
    except Exception as exc:  # a certificate file that is missing or unreadable
        raise JobError(f"cannot reach the Dask scheduler at {address}: its TLS settings do not load "
                       f"({type(exc).__name__}: {exc}); {_TLS_HELP}") from None
    if context is None:
        raise JobError(f"cannot reach the Dask scheduler at {address}: a {address.split(':')[0]}:// address "
                       f"needs TLS settings, and none are set; {_TLS_HELP}")
    return security


_TLS_HELP = ("set Dask's: DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT "
             "and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (or distributed.comm.tls in Dask's configuration "
             "file), or use a tcp:// address")


def _unreachable(address: str, exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):  # our deadline: something answered, not Dask
        what = (f"no Dask handshake within {CONNECT_TIMEOUT_S:g} s (something accepts connections there "
                "but does not speak Dask's protocol)")
    elif isinstance(exc, MemoryError):  # a reply of another protocol read as a frame length
        what = ("what answers there is not a Dask scheduler (another protocol, HTTP perhaps: the "
                "dashboard's port, usually 8787, is not the scheduler's, usually 8786)")
    else:
        what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
    return (f"cannot reach the Dask scheduler at {address}: {what}; check the address (--cluster or "
            "[run] cluster) and that the scheduler is running")
