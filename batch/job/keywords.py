"""The Python door's options: keyword arguments in the job file's words, merged into one validated Job.

An option is a job-file key in snake_case without its table (`max_new_tokens` is `[task]
max-new-tokens`, `requests_per_minute` is `[limits] requests-per-minute`); it overrides the same key of
an optional job file. The keys that are paths of the job file itself (`[input] path`, `[output] path`,
`[state] path`) are the door's own arguments instead: the data, `output=` and `state=`. Validation is
the command line's (`config.job_from_tables`): every problem at once, as one `JobError`, each problem
naming an option the way the caller spelled it.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.errors import ConfigError
from batch.job.config import Job, job_from_tables
from batch.job.options import TABLES

# option name -> (table, key); the path keys are not options (see the module docstring).
OPTIONS: dict[str, tuple[str, str]] = {
    key.name.replace("-", "_"): (table, key.name)
    for table, keys in TABLES.items() for key in keys if key.name != "path"
}


def build_job(job_file: str | Path | None, options: Mapping[str, Any], *, data_path: Path,
              data_format: str | None, output: Path, state: Path, caller: str) -> Job:
    """The job: `job_file`'s tables (if any), then `options` over them, then the door's paths."""
    problems: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    file = Path(caller)  # messages name the call; relative paths (image-dir, schema-file) start here
    if job_file is not None:
        file = Path(job_file)
        try:
            tables = {k: dict(v) if isinstance(v, dict) else v
                      for k, v in tomllib.loads(file.read_text(encoding="utf-8")).items()}
        except FileNotFoundError:
            raise ConfigError([f"{file}: job file not found"]) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"{file}: cannot read the job file: {exc}"]) from exc
    given: dict[str, str] = {}  # "[table] key" -> the option that set it
    for name, value in options.items():
        if name not in OPTIONS:
            close = difflib.get_close_matches(name.replace("-", "_").lower(), list(OPTIONS), n=1)
            hint = f"did you mean {close[0]}=?" if close else "see batch.run's docstring for the options"
            problems.append(f"{caller}: {name}=: unknown option; {hint}")
            continue
        if value is None:  # None leaves the job file's value (or the default) in place
            continue
        table, key = OPTIONS[name]
        section = tables.setdefault(table, {})
        if not isinstance(section, dict):
            continue  # the job file's own problem, reported by the validation below
        section[key] = _toml_value(value)
        given[f"[{table}] {key}"] = name
    for table, key, value in (("input", "path", str(data_path)), ("input", "format", data_format),
                              ("output", "path", str(output)), ("state", "path", str(state))):
        section = tables.setdefault(table, {})
        if isinstance(section, dict) and value is not None:
            section[key] = value
    try:
        job = job_from_tables(tables, file)
    except ConfigError as exc:
        problems += [_in_callers_words(p, str(file), caller, given) for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return job


def _toml_value(value: Any) -> Any:
    """What TOML would have given: paths as strings, tuples as lists; a response_format given the
    OpenAI way ({"type": "json_schema", "json_schema": {"name", "schema", ...}}) as the job file's flat
    table. Only top-level names are respelled (`schema_file`): a schema's own property names stay."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_toml_value(v) for v in value]
    if isinstance(value, Mapping):
        inner = value.get("json_schema")
        flat = {**value, **inner} if isinstance(inner, Mapping) and value.get("type") == "json_schema" \
            else dict(value)
        return {str(k).replace("_", "-"): v for k, v in flat.items() if k != "json_schema"}
    return value


def _in_callers_words(problem: str, label: str, caller: str, given: Mapping[str, str]) -> str:
    """A validation message about a key an option set names that option: `max_new_tokens=: ...`."""
    for where, name in given.items():
        if f"{label}: {where}" in problem:
            return problem.replace(f"{label}: {where}", f"{caller}: {name}=")
    return problem


def describe_options() -> str:
    """Every option with its table, for docstrings and error messages."""
    return ", ".join(f"{name} ([{table}] {key})" for name, (table, key) in OPTIONS.items())


__all__ = ["OPTIONS", "build_job", "describe_options"]
