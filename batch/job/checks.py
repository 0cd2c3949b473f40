"""How one value of a job-file key is checked and converted, and the rules between keys: each returns a
problem as a sentence (without the file and table prefix that `config` adds), never raises.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.job import catalog
from batch.job.options import SECRET_KEYS, TABLES, Key, bounds
from batch.job.schema import schema_problem
from batch.job.template import parse_template

# JSON mode: Groq refuses raw reasoning with these response formats (docs/groq.md, "Reasoning").
JSON_MODES = ("json_object", "json_schema")
# What a gpt-oss model takes instead of each reasoning format.
INSTEAD_OF_FORMAT = {"hidden": "include-reasoning = false", "parsed": "include-reasoning = true",
                     "raw": "include-reasoning = true (the reasoning lands in the reasoning column)"}


def show(value: object) -> str:
    """A value as TOML spells it, shortened, with its type: `"8" (a string)`."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    kind = next((name for t, name in kinds if isinstance(value, t)), "a date/time")
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({kind})"


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
            return None, f"must be {bounds(key) or 'a finite number'}, got {num}"
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


def run_problems(label: str, run: Mapping[str, Any]) -> list[str]:
    problems = []
    window, cluster = run.get("completion_window"), run.get("cluster")
    if window is not None and window_hours(window) is None:
        problems.append(f"{label}: [run] completion-window: must be a duration from 24h to 7d such as "
                        f"\"24h\", \"48h\" or \"7d\", got {json.dumps(window)}")
    if cluster is not None and not valid_cluster(cluster):
        problems.append(f"{label}: [run] cluster: must be \"local\", \"local:N\" or a scheduler address "
                        f"such as \"tcp://10.0.0.5:8786\", got {json.dumps(cluster)}")
    return problems


def valid_cluster(text: str) -> bool:
    """A Dask scheduler address (tcp://HOST:PORT, tls://, ws://), or local / local:N (N up to 999)."""
    return re.fullmatch(r"local(:[1-9]\d{0,2})?|(tcp|tls|ws|wss)://\S+", text) is not None


def window_hours(text: str) -> float | None:
    """Hours in a completion window such as "24h" or "7d", if Groq takes it (24h to 7d), else None."""
    m = re.fullmatch(r"(\d+)([hd])", text.strip())
    hours = None if m is None else int(m.group(1)) * (24 if m.group(2) == "d" else 1)
    return hours if hours is not None and 24 <= hours <= 168 else None


# The fewest completion tokens one row's answer in a pack needs (its id, the JSON around it, a short
# answer): a pack's budget (max-new-tokens, for the whole request) below this many a row is refused.
ITEM_TOKENS = 16


def task_conflicts(label: str, task: Mapping[str, Any]) -> list[str]:
    """Problems between [task] keys that are each valid alone, Groq's reasoning rules among them: a
    setting Groq answers with a 400 is refused here, before anything is sent."""
    problems, where = [], f"{label}: [task]"
    model, effort = task.get("model") or "", task.get("reasoning_effort")
    fmt, include = task.get("reasoning_format"), task.get("include_reasoning")
    rules = catalog.reasoning_of(model)
    if fmt is not None and rules is not None and not rules.takes_format:
        problems.append(f"{where} reasoning-format: Groq refuses reasoning_format for {model} (the gpt-oss "
                        "models take include-reasoning instead); remove reasoning-format" +
                        ("" if include is not None else f" and set {INSTEAD_OF_FORMAT[fmt]}"))
    elif fmt is not None and include is not None:
        problems.append(f"{where} reasoning-format, include-reasoning: Groq takes one or the other, "
                        "not both; remove one")
    elif fmt == "raw" and (task.get("response_format") or {}).get("type") in JSON_MODES:
        problems.append(f'{where} reasoning-format: "raw" reasoning cannot go with a JSON response-format '
                        '(Groq answers 400); use "parsed" (the reasoning lands in the reasoning column) or '
                        '"hidden"')
    if effort is not None and rules is not None and effort not in rules.efforts:
        problems.append(f"{where} reasoning-effort: {model} takes {', '.join(rules.efforts)}, "
                        f"got {json.dumps(effort)}")
    rows, budget = task.get("rows_per_request") or 1, task.get("max_new_tokens")
    if rows > 1 and budget is not None and budget < ITEM_TOKENS * rows:
        problems.append(f"{where} max-new-tokens, rows-per-request: with rows-per-request = {rows}, "
                        f"max-new-tokens ({budget}) is the budget of the whole request, {budget // rows} "
                        f"tokens a row, too few for {rows} answers (at least {ITEM_TOKENS} a row); raise "
                        f"max-new-tokens to {ITEM_TOKENS * rows} or more, or lower rows-per-request")
    return problems
