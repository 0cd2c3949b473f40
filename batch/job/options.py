"""The job file's tables and keys: what each key means, its type, range and default — the single source
of truth that `config` validates against (through `keycheck`) and `describe_keys()` renders for the
README, so the documentation cannot drift from what is enforced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

# Names that can only mean a credential. `key` is one too, except in [input], where it names a column.
SECRET_KEYS = frozenset({"api-key", "apikey", "groq-api-key", "secret", "token", "password"})


@dataclass(frozen=True)
class Key:
    """One key of a job-file table: how it is validated, and how it is documented."""

    name: str
    kind: Literal["string", "column", "template", "path", "url", "integer", "number", "boolean", "strings",
                  "response-format"]
    doc: str
    default: object = None
    required: bool = False
    lo: float | None = None
    hi: float | None = None
    above: bool = False  # `lo` is exclusive: a timeout must be > 0, while a temperature may be 0
    choices: tuple[str, ...] = ()
    example: str = ""  # shown when a required key is missing
    max_items: int = 0  # "strings": the most items an array may hold
    may_be_empty: bool = False  # "" is a value of its own (system-message = "": send none)


REASONING_EFFORTS = ("low", "medium", "high", "none", "default")
# `[api] server`: "auto" and the kinds of server batch knows the spelling of (`render.spelling`).
SERVERS = ("auto", "groq", "openai", "vllm", "llama.cpp")
TABLES: dict[str, tuple[Key, ...]] = {
    "input": (
        Key("path", "path", "The input table, relative to the job file; or a partitioned dataset: a "
            "folder, a glob (`parts/*.csv`) or a URL (`s3://bucket/prefix/`) of Parquet/CSV/JSONL files.",
            required=True, example='path = "data/rows.csv"'),
        Key("format", "string", "Overrides the extension (.csv .parquet .pq .jsonl .ndjson).",
            choices=("csv", "parquet", "jsonl")),
        Key("key", "column", "A column that names a row in error messages."),
    ),
    "task": (
        Key("model", "string", "The Groq model id.", required=True, example='model = "openai/gpt-oss-20b"'),
        Key("prompt", "template", "The user message: `${column}` placeholders, `$$` for a literal `$`.",
            required=True, example='prompt = "Summarise: ${text}"'),
        Key("system-message", "template",
            'The system message; a template too. `""` sends none. Not sent for a row that has a chat '
            "history.", default="You are a helpful assistant.", may_be_empty=True),
        Key("max-new-tokens", "integer", "Completion budget, sent as `max_completion_tokens` (and as "
            "`max_tokens` too, see `[api] send-max-tokens`).", lo=1),
        Key("temperature", "number", "Sampling temperature; 0 is sent as 0.", lo=0, hi=2),
        Key("top-p", "number", "Nucleus sampling.", lo=0, hi=1),
        Key("top-k", "integer", "Accepted for compatibility; Groq has no top_k, so it is never sent.", lo=1),
        Key("seed", "integer", "Sampling seed; 0 is sent as 0."),
        Key("user", "string", "An end-user id sent with every request."),
        Key("chat-history", "column",
            "A column of `[{role, content}]` (a Parquet list of structs, or JSON text)."),
        Key("prompt-images", "column",
            "A column of image URLs, data URLs or base64 images (one, or a list)."),
        Key("image-dir", "path", "A folder, relative to the job file, that image file paths in "
            "`prompt-images` are read from (and must stay inside).", example='image-dir = "images"'),
        Key("stop", "strings", "Where the answer stops: a string, or an array of up to 4; sent as `stop`.",
            max_items=4),
        Key("reasoning-effort", "string", "Sent as `reasoning_effort`: gpt-oss takes low, medium, high; "
            "qwen takes none, default.", choices=REASONING_EFFORTS),
        Key("reasoning-format", "string", "Sent as `reasoning_format`; not with `include-reasoning`.",
            choices=("hidden", "raw", "parsed")),
        Key("include-reasoning", "boolean", "Sent as `include_reasoning`; not with `reasoning-format`."),
        Key("service-tier", "string", "Sent as `service_tier` (a flex 498 is retried).",
            choices=("on_demand", "flex", "auto", "performance")),
        Key("response-format", "response-format",
            '`{type = "json_object"}`, or `{type = "json_schema", name = "...", schema = {...}}` (or '
            '`schema-file = "x.json"`, relative to the job file) with optional `strict`; sent as '
            '`response_format`. An object schema\'s properties become typed output columns.'),
        Key("rows-per-request", "integer", "Send up to this many rows in one request (one JSON array of "
            "their prompts, answered item by item), so the system message is paid once a request (put a "
            "long instruction there, not in `prompt`, which every row carries); `max-new-tokens` is then "
            "the whole request's budget. Rows with images or a chat history go one a request. See More "
            "rows per request.", default=1, lo=1, hi=500),
    ),
    "limits": (
        Key("requests-per-minute", "integer",
            "Request pace; default: the model's Groq base tier (30).", lo=1),
        Key("tokens-per-minute", "integer",
            "Token pace; default: the model's Groq base tier (8,000).", lo=1),
        Key("concurrency", "integer", "Requests in flight at once.", default=8, lo=1, hi=1024),
        Key("max-attempts", "integer", "Attempts per request, the first included.", default=6, lo=1, hi=100),
        Key("request-timeout", "number", "Seconds after which one attempt is cut (and retried); checked "
            "every quarter of it, at most every second, so a cut may come up to that much later.",
            default=120.0, lo=0, above=True),
        Key("max-cost-usd", "number", "The most one run may spend, in USD at the model's list price (Batch "
            "API: half): a request is sent only if its worst case (prompt estimate + max-new-tokens) still "
            "fits; then the run stops (exit 3) and the next run continues.", lo=0, above=True),
    ),
    "output": (
        Key("path", "path", "Output file (.parquet .pq .csv); default: beside the input, "
            "`<input stem>.enriched.parquet`. For a partitioned input, a folder (or URL) of Parquet parts; "
            "default `<input folder>.enriched`."),
        Key("text-column", "column", "The column that receives the answer text.", default="text"),
    ),
    "run": (
        Key("mode", "string", "`online` sends each request as it goes; `batch` submits them to Groq's Batch "
            "API (half price, answers within the completion window).", default="online",
            choices=("online", "batch")),
        Key("completion-window", "string", "Batch mode: how long Groq may take, `24h` to `7d`.",
            default="24h"),
        Key("on-expired", "string", "Batch mode: requests a batch did not answer in its window are left "
            "for the `next-run` (a new batch), or sent `online` at once.", default="next-run",
            choices=("next-run", "online")),
        Key("poll-interval", "number", "Batch mode: the longest wait, in seconds, between two looks at a "
            "batch (they start at 1 s and back off).", default=60.0, lo=0, above=True),
        Key("cluster", "string", "Run on Dask: a scheduler address `tcp://HOST:PORT`, or `local` / `local:N` "
            "(N worker processes on this machine); needs `pip install \"batch[dask]\"`."),
        Key("metrics-file", "path", "A Prometheus textfile (for node_exporter's textfile collector), "
            "relative to the job file: the run's counts, exit code and last success time, replaced "
            "atomically about every 15 s and when the run ends, however it ends (see Monitoring).",
            example='metrics-file = "/var/lib/node_exporter/textfile/resumes.prom"'),
        Key("log-format", "string", "`text`: compact log lines on stderr; `json`: one JSON object a line "
            "(time, level, message, job, and the row, attempt, status and wait a line is about).",
            default="text", choices=("text", "json")),
    ),
    "api": (
        Key("base-url", "url", "OpenAI-style base URL, e.g. `http://localhost:8080/v1`."),
        Key("send-max-tokens", "boolean", "Also send `max-new-tokens` as `max_tokens`, the older name that "
            "some servers (llama.cpp's) know instead of `max_completion_tokens`. Default: yes, except to "
            "Groq and OpenAI (`[api] server`, else `api.groq.com`, `api.openai.com`, a base URL ending in "
            "`/openai/v1`)."),
        Key("server", "string", "The kind of server the base URL is, for the fields servers spell their own "
            "way: structured output goes as `json_schema` to `groq`, `openai` and `vllm`, and as "
            "`json_object` with a `schema` to `llama.cpp` (llama-server, llama-cpp-python). `auto`: Groq or "
            "OpenAI by the URL; any other server is asked which it is before a json_schema job's first "
            "request.", default="auto", choices=SERVERS),
    ),
    "state": (Key("path", "path", "The SQLite state; default: the output path + `.state.sqlite`. For a "
                  "partitioned input, a folder of per-partition journals (default: the output folder + "
                  "`.state`) that every cluster worker must reach."),),
}


def bounds(key: Key) -> str:
    if key.lo is None:
        return ""
    if key.hi is not None:
        return f"between {key.lo} and {key.hi}"
    return f"greater than {key.lo}" if key.above else f"at least {key.lo}"


_KIND_DOC = {"strings": "string or array of strings", "response-format": "inline table"}


def describe_keys() -> str:
    """Every job-file key as Markdown table rows (header included), rendered from TABLES for the README."""
    rows = ["| Table | Key | Type | Default | Description |", "|---|---|---|---|---|"]
    for table, keys in TABLES.items():
        for k in keys:
            kind = f"one of {', '.join(k.choices)}" if k.choices else _KIND_DOC.get(k.kind, k.kind)
            kind += f", {bounds(k)}" if bounds(k) else ""
            default = "required" if k.required else "" if k.default is None else f"`{json.dumps(k.default)}`"
            rows.append(f"| `[{table}]` | `{k.name}` | {kind} | {default} | {k.doc} |")
    return "\n".join(rows)
