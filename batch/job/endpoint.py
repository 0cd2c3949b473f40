"""Where requests go and with which key: the base URL's precedence, the plain-HTTP rule, the key.

    --base-url  >  [api] base-url  >  GROQ_BASE_URL (a host; /openai/v1 is appended, as Groq's SDK does)
                >  https://api.groq.com/openai/v1

The key (GROQ_API_KEY, from the environment only) travels only over HTTPS, or to a loopback host,
where it is optional (local servers and the simulator). Every door resolves its endpoint here; the
simulator is the door's business (`batch.doors.simulated`), never the engine's. Which kind of server
it is (`server_kind`) decides the fields servers spell their own way (`render.spelling`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from batch.errors import ConfigError, JobError
from batch.job import catalog
from batch.job.config import Job

DEFAULT_BASE_URL = "https://api.groq.com/openai/v1"


@dataclass(frozen=True)
class Endpoint:
    """A server to run against: its base URL, the key (None for a keyless loopback server), the pace
    to start from, and whether it is the built-in simulator (then the model list is not asked)."""

    base_url: str
    key: str | None = field(repr=False)  # never in a repr, a log line or a traceback's locals
    rpm: float
    tpm: float
    simulated: bool = False


def resolve(job: Job, base_url: str | None, env: Mapping[str, str]) -> Endpoint:
    """The configured API for `job`: URL by precedence, key from `env`, pace from the job's limits or
    the model's base tier."""
    base = catalog.limits_for(job.task.model)
    rpm = float(job.limits.requests_per_minute or base.rpm)
    tpm = float(job.limits.tokens_per_minute or base.tpm)
    url = check_base_url(resolve_base_url(base_url, job, env))
    return Endpoint(url, api_key(url, env), rpm, tpm)


def api_key(url: str, env: Mapping[str, str]) -> str | None:
    """GROQ_API_KEY, required unless the server is on this machine."""
    key = env.get("GROQ_API_KEY") or None
    if key is None and not is_loopback(urlsplit(url).hostname or ""):
        raise JobError("GROQ_API_KEY is not set. Export your Groq API key (export GROQ_API_KEY=gsk_...), "
                       "or try the job without one: python -m batch run JOB.toml --simulate")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """The base URL without a trailing slash; refuses plain HTTP to anything but loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobError(f"base URL {url!r} is not an http(s) URL (e.g. {DEFAULT_BASE_URL})")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise JobError(f"base URL {url!r} uses plain http to a non-loopback host; the API key would "
                       "travel unencrypted. Use https://, or http:// only to localhost/127.0.0.1")
    return url.rstrip("/")


def resolve_base_url(cli: str | None, job: Job | None, env: Mapping[str, str]) -> str:
    """The OpenAI-style base URL, without a trailing slash; the client posts to `{it}/chat/completions`.

    Precedence: `--base-url`, `[api] base-url`, `GROQ_BASE_URL`, then Groq itself. GROQ_BASE_URL keeps
    the official SDK's meaning (a host; the SDK appends `/openai/v1`), so a value exported for the SDK
    points this tool at the same server. A source that is not an http(s) URL is a ConfigError.
    """
    host = env.get("GROQ_BASE_URL", "").strip().rstrip("/")
    job_url = job.api.base_url if job else None
    for source, url in (("--base-url", cli), (f"{job.file if job else ''}: [api] base-url", job_url),
                        ("GROQ_BASE_URL", host and host + "/openai/v1")):
        if url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError([f"{source}: must start with http:// or https://, got {json.dumps(url)}"])
            return url.rstrip("/")
    return DEFAULT_BASE_URL


# Servers that take `max_completion_tokens` and treat `max_tokens` as deprecated (Groq) or refuse it for
# some models (OpenAI's reasoning models): they get the one field, exactly as every earlier version sent.
MAX_COMPLETION_ONLY = frozenset({"groq", "openai"})


def server_kind(job: Job, base_url: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The kind of server requests go to, as far as the job and the URL tell: `[api] server`, else
    "groq" for `api.groq.com` or a base URL ending in `/openai/v1` (the simulator's too), "openai" for
    `api.openai.com`; None for any other server (`send.servers.spoken_by` asks it when it matters).
    `base_url` None: the job's own, by the usual precedence (what `plan` and `status` assume)."""
    if job.api.server != "auto":
        return job.api.server
    parts = urlsplit(base_url if base_url is not None else resolve_base_url(None, job, env or {}))
    host = (parts.hostname or "").lower()
    if host == "api.groq.com" or parts.path.rstrip("/").endswith("/openai/v1"):
        return "groq"
    return "openai" if host == "api.openai.com" else None


def sends_max_tokens(job: Job, base_url: str | None = None,
                     env: Mapping[str, str] | None = None) -> bool:
    """Whether requests carry `max_tokens` beside `max_completion_tokens` (the same value): the job's
    `[api] send-max-tokens`, else yes for every server but Groq and OpenAI (`server_kind`). Local
    OpenAI-compatible servers (llama.cpp's, older vLLM) know only `max_tokens` and would ignore the
    budget otherwise; Groq's path (`/openai/v1`, also the simulator's) keeps its bytes."""
    if job.api.send_max_tokens is not None:
        return job.api.send_max_tokens
    return server_kind(job, base_url, env) not in MAX_COMPLETION_ONLY
