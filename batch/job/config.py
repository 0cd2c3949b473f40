"""The job file: load, validate, resolve.

This module owns the TOML contract of a job as a whole: which tables there are, the values derived from
several keys (paths resolved from the job file's directory, never the CWD; output and state defaults;
conflicts between keys) and the base-URL precedence. It turns a file into a frozen `Job`, or into one
`ConfigError` listing every problem at once, each naming the file, the table and the key, and saying
how to fix it. Each key on its own — type, range, default, documentation — is `keys.TABLES`'s. Checks
that need the input's schema (template columns exist, output columns do not clash) are `preflight`'s.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batch import fields
from batch.errors import ConfigError
from batch.job.checks import check_value, run_problems, show, task_conflicts, unknown_name, window_hours
from batch.job.options import TABLES, describe_keys
from batch.job.paths import resolve_paths

__all__ = [
    "ANSWER_COLUMNS",
    "TABLES",
    "Job",
    "TaskSpec",
    "describe_keys",
    "job_from_tables",
    "load_job",
    "output_columns",
    "parse_job",
    "window_hours",
]

# The columns the output appends after the text column, in order: the answer's fields marked for it.
ANSWER_COLUMNS: tuple[str, ...] = fields.ANSWER_COLUMNS


@dataclass(frozen=True)
class InputSpec:
    path: Path
    format: str  # "csv" | "parquet" | "jsonl"; "" for a dataset whose files each say it by extension
    key: str | None
    dataset: str | None = None  # a partitioned input: folder, glob or URL (then `partitions` reads it)


@dataclass(frozen=True)
class TaskSpec:
    model: str
    prompt: str
    system_message: str = "You are a helpful assistant."  # "": no system message at all
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    user: str | None = None
    chat_history: str | None = None
    prompt_images: str | None = None
    stop: str | tuple[str, ...] | None = None
    reasoning_effort: str | None = None
    reasoning_format: str | None = None
    include_reasoning: bool | None = None
    service_tier: str | None = None
    # Already in Groq's shape: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}},
    # with a schema-file read and parsed at load time.
    response_format: Mapping[str, Any] | None = None
    image_dir: Path | None = None
    rows_per_request: int = 1  # rows of text sent together in one request (`render.packs`)


@dataclass(frozen=True)
class LimitsSpec:
    requests_per_minute: int | None = None  # None: the model's Groq base tier, decided by `limits`
    tokens_per_minute: int | None = None
    concurrency: int = 8
    max_attempts: int = 6
    request_timeout: float = 120.0
    max_cost_usd: float | None = None  # the spend cap of one run (`budget`)


@dataclass(frozen=True)
class OutputSpec:
    path: Path
    format: str  # "parquet" | "csv"
    text_column: str = "text"
    dataset: str | None = None  # a partitioned input's output: a folder (or URL) of Parquet parts


@dataclass(frozen=True)
class ApiSpec:
    base_url: str | None = None
    send_max_tokens: bool | None = None  # None: decided by the server (`endpoint.sends_max_tokens`)
    server: str = "auto"  # "groq" | "openai" | "vllm" | "llama.cpp"; "auto": `endpoint.server_kind`


@dataclass(frozen=True)
class StateSpec:
    path: Path


@dataclass(frozen=True)
class RunSpec:
    mode: str = "online"  # "online" | "batch" (Groq's Batch API)
    completion_window: str = "24h"
    on_expired: str = "next-run"  # "next-run" | "online"
    poll_interval: float = 60.0  # the longest wait between two looks at a batch
    cluster: str | None = None  # a Dask scheduler "tcp://HOST:PORT", or "local" / "local:N"
    metrics_file: Path | None = None  # a Prometheus textfile, resolved beside the job file
    log_format: str = "text"  # "text" | "json"


@dataclass(frozen=True)
class Job:
    file: Path
    input: InputSpec
    task: TaskSpec
    limits: LimitsSpec
    output: OutputSpec
    api: ApiSpec
    state: StateSpec
    run: RunSpec = RunSpec()


REQUIRED_TABLES = ("input", "task")

def _check_table(label: str, table: str, raw: Mapping[str, Any], problems: list[str],
                 base: Path) -> dict[str, Any]:
    """The table's values by field name, defaults filled in; a key with a problem is reported and left out."""
    known = {k.name for k in TABLES[table]}
    problems += [unknown_name(label, table, n, v) for n, v in raw.items() if n not in known]
    values: dict[str, Any] = {}
    for key in TABLES[table]:
        where, field = f"{label}: [{table}] {key.name}", key.name.replace("-", "_")
        if key.name in raw:
            value, problem = check_value(key, raw[key.name], base)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                values[field] = value
        elif key.required:
            problems.append(f"{where}: required key is missing (e.g. {key.example})")
        else:
            values[field] = key.default
    return values


def _beside(job_file: Path, raw: str) -> Path:
    """A path from the job file, resolved from the job file's directory (an absolute one stays)."""
    return (job_file.parent / raw).resolve()


def parse_job(text: str, file: Path) -> Job:
    """The job in `text`, as if read from `file` (named in messages; relative paths start beside it)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}"]) from exc
    return job_from_tables(data, file)


def job_from_tables(data: Mapping[str, Any], file: Path) -> Job:
    """The job in `data` (TOML's tables as dicts), as if read from `file`: the one validation of every
    door. `file` is named in messages, and relative paths start beside it."""
    label = str(file)  # as the user typed it: messages should echo their words, not an absolute path
    problems = [unknown_name(label, None, n, v) for n, v in data.items() if n not in TABLES]
    values: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        raw = data.get(table, {})  # an absent optional table is an empty one: all defaults
        if table not in data and table in REQUIRED_TABLES:
            required = " and ".join(k.name for k in TABLES[table] if k.required)
            problems.append(f"{label}: [{table}]: required table is missing (add [{table}] with {required})")
        elif not isinstance(raw, dict):
            problems.append(f"{label}: [{table}]: must be a table ([{table}] on its own line, then its keys),"
                            f" got {show(raw)}")
        else:
            values[table] = _check_table(label, table, raw, problems, file.resolve().parent)

    # Derived values: each is computed only from valid keys (a key with a problem is absent from
    # `values` and already reported), so one mistake yields one message, not a cascade.
    job_file = file.resolve()
    inp, out, st = (values.get(t, {}) for t in ("input", "output", "state"))
    in_path, in_format, out_path, out_format, lay = resolve_paths(label, job_file, inp, out, st, problems)
    if out.get("text_column") in ANSWER_COLUMNS:
        problems.append(f"{label}: [output] text-column: {json.dumps(out['text_column'])} is one of the "
                        f"answer columns the output appends ({', '.join(ANSWER_COLUMNS)}); choose another")
    task = values.get("task", {})
    if task.get("image_dir"):
        task["image_dir"] = _beside(job_file, task["image_dir"])
        if not task["image_dir"].is_dir():
            problems.append(f"{label}: [task] image-dir: {task['image_dir']} is not a folder")
    run = values.get("run", {})
    if run.get("metrics_file"):
        run["metrics_file"] = _beside(job_file, run["metrics_file"])
    problems += task_conflicts(label, task)
    problems += run_problems(label, run)
    if problems:
        raise ConfigError(problems)
    assert in_path and in_format is not None and out_path and out_format  # no problems: all derived
    state_path = lay.state if lay else (job_file.parent / st["path"]).resolve() if st.get("path") else \
        out_path.with_name(out_path.name + ".state.sqlite")
    return Job(
        file=job_file,
        input=InputSpec(path=in_path, format=in_format, key=inp["key"], dataset=lay.input if lay else None),
        task=TaskSpec(**values["task"]),
        limits=LimitsSpec(**values["limits"]),
        output=OutputSpec(path=out_path, format=out_format, text_column=out["text_column"],
                          dataset=lay.output if lay else None),
        api=ApiSpec(**values["api"]),
        state=StateSpec(path=state_path),
        run=RunSpec(**values["run"]),
    )


def load_job(path: Path) -> Job:
    """Read and validate the job file at `path`; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: job file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the job file: {exc}"]) from exc
    return parse_job(text, path)


def with_state(job: Job, path: Path) -> Job:
    """The same job with its store at `path` (a door's own choice: a cache, a simulated run's)."""
    return replace(job, state=replace(job.state, path=path))


def output_columns(job: Job) -> tuple[str, ...]:
    """The columns the output appends after every input column, in order."""
    return (job.output.text_column, *ANSWER_COLUMNS)
