"""The job file's tables and keys: what each key means, its type, range and default, and how one value
is checked — the single source of truth that `config` validates against and `describe_keys()` renders
for the README, so the documentation cannot drift from what is enforced.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batch.structured import schema_problem
from batch.template import parse_template

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
    ),
    "limits": (
        Key("requests-per-minute", "integer",
            "Request pace; default: the model's Groq base tier (30).", lo=1),
        Key("tokens-per-minute", "integer",
            "Token pace; default: the model's Groq base tier (8,000).", lo=1),
        Key("concurrency", "integer", "Requests in flight at once.", default=8, lo=1, hi=1024),
        Key("max-attempts", "integer", "Attempts per request, the first included.", default=6, lo=1, hi=100),
        Key("request-timeout", "number", "Seconds after which one attempt is cut (and retried).",
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
    ),
    "api": (
        Key("base-url", "url", "OpenAI-style base URL, e.g. `http://localhost:8080/v1`."),
        Key("send-max-tokens", "boolean", "Also send `max-new-tokens` as `max_tokens`, the older name that "
            "some servers (llama.cpp's) know instead of `max_completion_tokens`. Default: yes, except to "
            "Groq and OpenAI (`api.groq.com`, `api.openai.com`, a base URL ending in `/openai/v1`)."),
    ),
    "state": (Key("path", "path", "The SQLite state; default: the output path + `.state.sqlite`. For a "
                  "partitioned input, a folder of per-partition journals (default: the output folder + "
                  "`.state`) that every cluster worker must reach."),),
}


def show(value: object) -> str:
    """A value as TOML spells it, shortened, with its type: `"8" (a string)`."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    kind = next((name for t, name in kinds if isinstance(value, t)), "a date/time")
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({kind})"


def _bounds(key: Key) -> str:
    if key.lo is None:
        return ""
    if key.hi is not None:
        return f"between {key.lo} and {key.hi}"
    return f"greater than {key.lo}" if key.above else f"at least {key.lo}"


def check_value(key: Key, value: object, base: Path) -> tuple[Any, str | None]:
    """One present value, converted, or the problem with it (without the file/table/key prefix).
    `base` is the job file's directory, where a relative file named by the value is looked for."""
    if isinstance(value, str) and value.startswith("gsk_"):  # a pasted key: say so, never echo it
        return None, "looks like an API key; secrets never live in job files: set GROQ_API_KEY instead"
    if key.kind == "boolean":
        return (value, None) if isinstance(value, bool) else (None, f"must be true or false, got "
                                                                    f"{show(value)}")
    if key.kind == "strings":
        return _check_strings(key, value)
    if key.kind == "response-format":
        return _check_response_format(value, base)
    if key.kind in ("integer", "number"):
        # bool is an int to Python but not to TOML: `concurrency = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int if key.kind == "integer" else int | float):
            return None, f"must be {'an' if key.kind == 'integer' else 'a'} {key.kind}, got {show(value)}"
        num = value if key.kind == "integer" else float(value)
        low_ok = key.lo is None or (num > key.lo if key.above else num >= key.lo)
        finite = key.kind == "integer" or math.isfinite(num)  # isfinite() overflows on a huge int
        if not (finite and low_ok and (key.hi is None or num <= key.hi)):
            return None, f"must be {_bounds(key) or 'a finite number'}, got {num}"
        return num, None
    if not isinstance(value, str):
        return None, f"must be a string, got {show(value)}"
    if key.may_be_empty and value == "":
        return value, None
    if not value.strip():
        return None, "must not be empty" + ("" if key.required else "; remove the key to use the default") \
            + ('; "" (nothing between the quotes) means none' if key.may_be_empty else "")
    if key.choices and value.lower() not in key.choices:
        return None, f"must be one of {', '.join(map(json.dumps, key.choices))}, got {show(value)}"
    if key.kind == "url" and not value.startswith(("http://", "https://")):
        return None, f"must start with http:// or https://, got {show(value)}"
    if key.kind == "template":
        try:
            parse_template(value)
        except ValueError as exc:
            return None, str(exc)
    return value.lower() if key.choices else value, None


def _check_strings(key: Key, value: object) -> tuple[Any, str | None]:
    """A string, or an array of at most `key.max_items` non-empty strings (kept as a tuple)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        return None, f"must be a string or an array of strings, got {show(value)}"
    if not items or not all(items):
        return None, "must not be empty (nor hold an empty string); remove the key to send none"
    if len(items) > key.max_items:
        return None, f"takes at most {key.max_items} strings, got {len(items)}"
    return (value if isinstance(value, str) else tuple(items)), None


_FORMAT_KEYS = {"json_object": {"type"}, "json_schema": {"type", "name", "schema", "schema-file", "strict"}}


def _check_response_format(value: object, base: Path) -> tuple[Any, str | None]:
    """An inline table, as Groq's `response_format`; a schema-file is read and parsed now, so a bad one
    stops the job before anything is sent."""
    if not isinstance(value, dict):
        return None, f'must be an inline table such as {{type = "json_object"}}, got {show(value)}'
    kind = value.get("type")
    if kind not in _FORMAT_KEYS:
        return None, f'type must be "json_object" or "json_schema", got {show(kind)}'
    extra = sorted(set(value) - _FORMAT_KEYS[kind])
    if extra:
        return None, f"unknown key(s) {', '.join(extra)} for type {json.dumps(kind)}; known: " + \
            ", ".join(sorted(_FORMAT_KEYS[kind]))
    if kind == "json_object":
        return {"type": "json_object"}, None
    name, strict = value.get("name"), value.get("strict")
    if not isinstance(name, str) or not name.strip():
        return None, 'json_schema needs a name = "..." (a non-empty string)'
    if strict is not None and not isinstance(strict, bool):
        return None, f"strict must be true or false, got {show(strict)}"
    if ("schema" in value) == ("schema-file" in value):
        return None, "json_schema needs exactly one of schema = {...} or schema-file = \"path.json\""
    schema = value.get("schema")
    if "schema-file" in value:
        if not isinstance(value["schema-file"], str) or not value["schema-file"].strip():
            return None, f"schema-file must be a path, got {show(value['schema-file'])}"
        file = base / value["schema-file"]
        try:
            schema = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, f"schema-file {file} not found"
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"cannot read schema-file {file}: {exc}"
        except ValueError as exc:
            return None, f"schema-file {file} is not valid JSON: {exc}"
    if not isinstance(schema, dict):
        return None, f"the schema must be a JSON object, got {show(schema)}"
    spec: dict[str, Any] = {"name": name, "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    response_format = {"type": "json_schema", "json_schema": spec}
    problem = schema_problem(response_format)  # answers could never be checked against it
    return (None, problem) if problem else (response_format, None)


def unknown_name(label: str, table: str | None, name: str, value: object) -> str:
    """The problem with a name the contract does not know (table None: top level), with a likely fix."""
    norm = name.replace("_", "-").lower()  # snake_case and capitals are near-misses, not new keys
    where = f"{label}: [{table}] {name}" if table else f"{label}: {name}"
    if norm in SECRET_KEYS or (norm == "key" and table != "input"):
        return f"{where}: secrets never live in job files; remove it and set GROQ_API_KEY in the environment"
    if table is None and isinstance(value, dict):
        close = difflib.get_close_matches(norm, list(TABLES), n=1)
        hint = f"did you mean [{close[0]}]?" if close else f"known tables: [{'], ['.join(TABLES)}]"
        return f"{label}: [{name}]: unknown table; {hint}"
    names = [k.name for k in TABLES[table]] if table else []
    close = [norm] if norm in names else difflib.get_close_matches(norm, names, n=1)
    elsewhere = [t for t, keys in TABLES.items() if t != table and any(k.name == norm for k in keys)]
    if close:
        return f"{where}: unknown key; did you mean '{close[0]}'?"
    if elsewhere:
        return f"{where}: unknown key; did you mean [{elsewhere[0]}] {norm}?"
    return f"{where}: unknown key; " + (f"known keys: {', '.join(names)}" if names else "keys go in a table")


_KIND_DOC = {"strings": "string or array of strings", "response-format": "inline table"}


def describe_keys() -> str:
    """Every job-file key as Markdown table rows (header included), rendered from TABLES for the README."""
    rows = ["| Table | Key | Type | Default | Description |", "|---|---|---|---|---|"]
    for table, keys in TABLES.items():
        for k in keys:
            kind = f"one of {', '.join(k.choices)}" if k.choices else _KIND_DOC.get(k.kind, k.kind)
            kind += f", {_bounds(k)}" if _bounds(k) else ""
            default = "required" if k.required else "" if k.default is None else f"`{json.dumps(k.default)}`"
            rows.append(f"| `[{table}]` | `{k.name}` | {kind} | {default} | {k.doc} |")
    return "\n".join(rows)
