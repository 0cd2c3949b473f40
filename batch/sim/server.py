"""A faithful Groq double on aiohttp.web, for tests, demos and ``--simulate`` runs.

This module owns the server and its wiring: the ``/openai/v1`` routes (chat completions, models, and
Groq's 404 body for any other URL), the bearer-key check, latency and jitter, hangs, the clock,
``Simulator.log`` (every chat request) and :func:`serve` for the ``simulate`` command. The rest of the
imitation lives in modules of its own, which this one puts together:

- :mod:`.schema`: Groq's strict request schema (an unknown key is a 400) and its error bodies;
- :mod:`.answers`: the models, and the answers with their usage and 200 body. Every answer is a pure
  function of its request (:func:`sim_answer` echoes the last user message; a JSON ``response_format``
  gets :func:`sim_json_answer`; a pack, :mod:`.packs`, item by item, with the pack faults this module
  draws), so a test can prove that each answer landed on its own row;
- :mod:`.limits`: the per-model rate limits (RPM/TPM token buckets, RPD/TPD daily counters) with the
  ``x-ratelimit-*`` headers and ``retry-after``; :mod:`.faults`: the injected faults;
- :mod:`.config`: :class:`SimConfig` and the ``simulate`` command's options;
- :mod:`.batches`: the Batch API (``/files`` and ``/batches``), built on the same schema checks and
  answers; ``Simulator.files`` and ``Simulator.batches`` hold its state.

The package re-exports the names other code imports. The facts it imitates are in docs/groq.md; where
Groq is uncertain the stricter reading is taken (e.g. the 413 and the TPM charge count
``max_completion_tokens`` as requested tokens).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .answers import (
    DECOMMISSIONED,
    KNOWN_MODELS,
    ServedModel,
    answer,
    chat_completion,
    count_prompt_tokens,
    count_tokens,
    model_object,
    sim_answer,
    sim_json_answer,
    size_up,
    usage_block,
)
from .batches import BatchApi
from .config import FAULT_KINDS, SimConfig, add_cli_arguments, config_from_args
from .faults import fault_response
from .limits import ORG, UPGRADE, Budget, go_duration
from .packs import draw_damage, pack_size
from .schema import HttpError, invalid_key, parse_json, validate

# What other code imports from here, whichever module of the simulator defines it.
__all__ = [
    "DECOMMISSIONED", "FAULT_KINDS", "KNOWN_MODELS", "ORG", "PREFIX", "UPGRADE", "LogEntry", "ServedModel",
    "SimConfig", "Simulator", "add_cli_arguments", "config_from_args", "count_prompt_tokens", "count_tokens",
    "go_duration", "serve", "sim_answer", "sim_json_answer",
]

PREFIX = "/openai/v1"


@dataclass(frozen=True)
class LogEntry:
    """One chat-completions request: when (monotonic), what was answered (0: nothing was)."""

    t: float
    status: int
    body_sha256: str | None
    model: str | None
    fault: str | None
    tokens: int = 0  # what the answer charged (prompt + completion); 0 when nothing was answered


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _require_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to listen on {host!r}: the Groq simulator is for local tests only "
                         "(use 127.0.0.1, ::1 or localhost)")


class Simulator:
    """The Groq double: `await start()` for a base URL, `await stop()` when done, `log` to inspect."""

    def __init__(self, config: SimConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SimConfig()
        # The time that rate-limit windows, simulated days and batches run on; latency is always real.
        # A test may pass a clock it holds still or moves on by hand.
        self.clock = clock
        self.log: list[LogEntry] = []
        self.in_flight = 0  # chat requests received and not yet answered: a test can wait for one
        # Groq takes base64 images up to 4 MB a request: aiohttp's default 1 MB cap would be a wrong 413.
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self.app.router.add_get(f"{PREFIX}/models", self._models)
        self.app.router.add_post(f"{PREFIX}/chat/completions", self._chat)
        self.batch_api = BatchApi(lambda: self.config, self._authorized, clock)
        self.batch_api.add_routes(self.app.router, PREFIX)  # before the catch-all below, which would win
        self.files, self.batches = self.batch_api.files, self.batch_api.batches
        self.app.router.add_route("*", "/{tail:.*}", self._unknown_url)  # e.g. a client that posts to /v1
        self._fault_rng = random.Random(self.config.seed)
        self._jitter_rng = random.Random(self.config.seed + 1)
        self._pack_rng = random.Random(self.config.seed + 4)  # streams apart: jitter changes no fault
        self._epoch = clock()
        self._budgets: dict[str, Budget] = {}
        self._runner: web.AppRunner | None = None
        self._stopping = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on a loopback address (port 0: any free one); return the OpenAI-style base URL."""
        _require_loopback(host)
        self._stopping = False
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}{PREFIX}"

    async def stop(self) -> None:
        self._stopping = True  # hung and sleeping handlers notice within 50 ms and give up
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def uploads(self) -> int:
        """How many files were uploaded through ``POST /files`` (batch output files not included)."""
        return self.batch_api.uploads

    @property
    def batches_created(self) -> int:
        """How many batches ``POST /batches`` created."""
        return self.batch_api.batches_created

    def requests_answered(self, sha: str) -> int:
        """How many 200s were sent for a request body with this sha256."""
        return sum(e.status == 200 and e.body_sha256 == sha for e in self.log)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return scheme.lower() == "bearer" and bool(token) and self.config.api_key in (None, token)

    def _budget(self, model: str) -> Budget:
        now = self.clock()
        budget = self._budgets.setdefault(model, Budget(now))
        budget.sync(self.config, now, self._epoch)
        return budget

    async def _wait(self, request: web.Request, seconds: float) -> bool:
        """Sleep unless the client leaves or the simulator stops; False then, as nobody will read
        the answer. aiohttp does not cancel a handler when its client disconnects, hence the polling."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping or _gone(request):
                return False
            await asyncio.sleep(min(left, 0.05))
        return not _gone(request)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return invalid_key().response({})
        return web.json_response({"object": "list", "data": [model_object(m) for m in KNOWN_MODELS]})

    async def _unknown_url(self, request: web.Request) -> web.Response:
        message = (f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos, "
                   "or see the docs at https://console.groq.com/docs/")
        return HttpError(404, message, code="unknown_url").response({})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        raw = await request.read()
        request_id = "req_" + uuid.uuid4().hex[:26]
        trace: dict[str, str] = {}  # model and fault, as far as the handler got
        self.in_flight += 1
        try:
            response = await self._complete(request, raw, received, request_id, trace)
        except HttpError as err:
            # Past auth, the model's rate-limit headers go on every answer, errors included.
            model = trace.get("model", "")
            limits = self._budget(model).headers(self.config) if model in KNOWN_MODELS else {}
            response = err.response(limits and {**limits, "x-request-id": request_id})
        finally:
            self.in_flight -= 1
        status = 0 if response is None else response.status
        if response is None:  # drop, or the client left: close without sending a byte
            if request.transport is not None:
                request.transport.close()
            response = web.Response()
        digest = hashlib.sha256(raw).hexdigest()
        self.log.append(LogEntry(received, status, digest, trace.get("model"), trace.get("fault"),
                                 int(trace.get("tokens", 0)) if status == 200 else 0))
        return response

    async def _complete(self, request: web.Request, raw: bytes, received: float, request_id: str,
                        trace: dict[str, str]) -> web.Response | None:
        cfg = self.config
        if not self._authorized(request):
            raise invalid_key()
        if cfg.fault_rate > 0 and cfg.faults and self._fault_rng.random() < cfg.fault_rate:
            trace["fault"] = self._fault_rng.choice(cfg.faults)
            return await self._fault(request, trace["fault"])  # before parsing: faults cost no budget
        parsed = parse_json(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            trace["model"] = parsed["model"]
        body = validate(parsed)
        model, cap, prompt, requested = size_up(body)
        self._budget(model).admit(cfg, model, requested)
        admitted = time.monotonic()
        jitter = self._jitter_rng.uniform(0, cfg.jitter_ms) if cfg.jitter_ms > 0 else 0.0
        if not await self._wait(request, (cfg.latency_ms + jitter) / 1000):
            return None
        text, completion, finish = answer(body, cap, draw_damage(  # per item, as the pack is answered
            pack_size(body), cfg.pack_fault_rate, cfg.pack_faults, self._pack_rng))
        budget = self._budget(model)
        budget.charge(prompt + completion - requested)  # Groq charges what was used, not what was asked
        trace["tokens"] = str(prompt + completion)
        usage = usage_block(model, prompt, completion, admitted - received, time.monotonic() - admitted)
        return web.json_response(chat_completion(model, text, finish, usage, request_id, int(time.time())),
                                 headers={**budget.headers(cfg), "x-request-id": request_id})

    async def _fault(self, request: web.Request, kind: str) -> web.Response | None:
        if kind == "hang":  # the client should time out first; one that waits gets a 500
            if not await self._wait(request, self.config.hang_s):
                return None
            kind = "500"
        return fault_response(kind)


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Run the simulator as a server until cancelled (Ctrl-C)."""
    sim = Simulator(config)
    url = await sim.start(host, port)
    print(f"Groq simulator listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
