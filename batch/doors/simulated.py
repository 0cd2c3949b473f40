"""The built-in Groq simulator as an endpoint, for the doors that offer it (`--simulate`, `simulate=True`).

A demo of the whole path: generous limits (the job's own are the real account's), a little latency,
and a few faults so that retries show. The engine never starts it; a door does (`endpoint_for`: the
simulator or the configured server), and hands the engine its endpoint like any other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from batch.job import endpoint
from batch.job.config import Job, with_state
from batch.job.endpoint import Endpoint

if TYPE_CHECKING:  # the simulator (aiohttp's server) is imported only when one is started
    from batch.sim import SimConfig

log = logging.getLogger("batch")

KEY = "gsk_simulated"  # what a simulated run sends instead of the user's key
RPM, TPM = 6000, 2_000_000


def demo_config() -> SimConfig:
    from batch.sim import SimConfig
    return SimConfig(rpm=RPM, tpm=TPM, rpd=1_000_000, tpd=10**9, latency_ms=40, jitter_ms=40,
                     fault_rate=0.03, faults=("500", "502", "503", "drop", "malformed"), seed=2)


@contextlib.asynccontextmanager
async def simulated(config: SimConfig | None = None) -> AsyncIterator[Endpoint]:
    """The simulator, serving on a free loopback port for as long as the block runs."""
    from batch.sim import Simulator
    sim = Simulator(config or demo_config())
    url = await sim.start()
    log.info("simulate: using the built-in Groq simulator at %s (no key, no network)", url)
    try:
        yield Endpoint(url, KEY, float(RPM), float(TPM), simulated=True)
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def endpoint_for(job: Job, base_url: str | None, env: Mapping[str, str], *,
                       simulate: bool) -> AsyncIterator[Endpoint]:
    """Where a door's run goes, for as long as the block runs: the simulator (`simulate`), else the
    server `base_url`, the job and `env` name (`endpoint.resolve`: also the key)."""
    if simulate:
        async with simulated() as ep:
            yield ep
    else:
        yield endpoint.resolve(job, base_url, env)


def kept_apart(job: Job) -> Job:
    """The job with a store of its own for simulated answers (`<state>.simulated.sqlite` beside the
    state), so that a later run against Groq never takes the simulator's answers for the model's."""
    path = job.state.path
    return with_state(job, path.with_name(f"{path.stem}.simulated{path.suffix or '.sqlite'}"))
