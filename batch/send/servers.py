"""Which kind of OpenAI-compatible server a run talks to, when neither the job nor the URL says.

`endpoint.server_kind` knows Groq and OpenAI by their URLs, and any kind the job names in `[api]
server`. Another server is asked only when the answer changes a request: a job with a json_schema
response format, which llama.cpp's servers take in a spelling of their own (`render.spelling`). It is
asked once per run (and once per process for a base URL), before the first request is rendered, by
what each server documents about itself:

- llama.cpp's `llama-server` lists its models with `"owned_by": "llamacpp"` (`GET /v1/models`), and
  answers `GET /props` (beside `/v1`) with its `default_generation_settings`;
- llama-cpp-python's server is a FastAPI app titled "llama.cpp Python API" (`GET /openapi.json`).

Anything else is taken as speaking OpenAI's spelling (vLLM, LiteLLM, Ollama, OpenAI itself). A server
that does not answer these questions is not held against the run: its first request tells, and a
server that refuses the request's shape stops the run once (`stops.Breaker.judged`), saying to set
`[api] server`.
"""

from __future__ import annotations

import logging
from typing import Any

from batch.errors import ApiError
from batch.job.config import Job
from batch.job.endpoint import Endpoint, server_kind
from batch.render.spelling import LLAMA_CPP, respelled
from batch.send.client import Client

log = logging.getLogger("batch")

OPENAI = "openai"  # what a server that says nothing about itself is taken to speak
ASK_TIMEOUT_S = 10.0
_known: dict[str, str] = {}  # base URL -> what it answered, for the runs of one process


async def spoken_by(job: Job, endpoint: Endpoint) -> str | None:
    """The kind of server `endpoint` is, for the requests of `job`: what the job and the URL say, else
    (for a job whose requests some server spells differently) what the server says; None when it
    does not matter (Groq's spelling then)."""
    kind = server_kind(job, endpoint.base_url)
    if kind is not None or endpoint.simulated or not respelled(job.task.response_format):
        return kind
    if endpoint.base_url not in _known:
        _known[endpoint.base_url] = await identify(endpoint.base_url, endpoint.key)
        log.info("server at %s: %s%s", endpoint.base_url, _known[endpoint.base_url],
                 " (structured output as {type: json_object, schema})"
                 if _known[endpoint.base_url] == LLAMA_CPP else "")
    return _known[endpoint.base_url]


async def identify(base_url: str, key: str | None) -> str:
    """"llama.cpp" if the server at `base_url` says it is one of llama.cpp's, else "openai"."""
    async with Client(base_url, key, timeout_s=ASK_TIMEOUT_S, connections=1) as client:
        models = await _get(client, "/models")
    listed = models.get("data") if isinstance(models, dict) else None
    if isinstance(listed, list) and any(isinstance(m, dict) and m.get("owned_by") == "llamacpp"
                                        for m in listed):
        return LLAMA_CPP
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    async with Client(root, key, timeout_s=ASK_TIMEOUT_S, connections=1) as client:
        props = await _get(client, "/props")
        if isinstance(props, dict) and isinstance(props.get("default_generation_settings"), dict):
            return LLAMA_CPP
        api = await _get(client, "/openapi.json")
    info = api.get("info") if isinstance(api, dict) else None
    title = info.get("title") if isinstance(info, dict) else None
    return LLAMA_CPP if isinstance(title, str) and "llama.cpp" in title else OPENAI


async def _get(client: Client, path: str) -> Any:
    """The JSON at `path`, or None if the server does not answer it with JSON."""
    try:
        data, _ = await client.call("GET", path)
    except ApiError as exc:
        log.debug("asking %s%s: %s", client.base_url, path, exc)
        return None
    return data
