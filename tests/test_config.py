"""Tests for batch.job.config: the job file's contract, its messages, templates and the base URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.errors import ConfigError, JobError
from batch.job.config import ANSWER_COLUMNS, TABLES, Job, describe_keys, load_job, output_columns, parse_job
from batch.job.endpoint import DEFAULT_BASE_URL, resolve_base_url
from batch.job.template import Placeholder, parse_template, template_columns

MINIMAL = """
[input]
path = "data/rows.csv"

[task]
model = "openai/gpt-oss-20b"
prompt = "Summarise: ${text}"
"""

FULL = """
[input]
path = "../data/resumes.jsonl"
format = "jsonl"
key = "id"

[task]
model = "openai/gpt-oss-20b"
prompt = \"\"\"Rewrite this experience using the STAR method:

${experience}\"\"\"
system-message = "You help ${name}."
max-new-tokens = 300
temperature = 0.05
top-p = 0.5
top-k = 10
seed = 7
user = "batch"
chat-history = "history"
prompt-images = "photo"

[limits]
requests-per-minute = 30
tokens-per-minute = 8000
concurrency = 16
max-attempts = 3
request-timeout = 30

[output]
path = "out/resumes.csv"
text-column = "resume_format"

[api]
base-url = "http://localhost:8080/v1/"

[state]
path = "state/run.sqlite"
"""


def job_with(text: str, file: Path = Path("jobs/x.toml")) -> Job:
    return parse_job(text, file)


def problems(text: str, file: Path = Path("jobs/x.toml")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_job(text, file)
    return info.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def with_task(*lines: str) -> str:
    """MINIMAL with extra lines appended to its [task] table."""
    return MINIMAL + "\n".join(lines) + "\n"


# --- a valid job -------------------------------------------------------------------------------------


def test_full_job_loads_every_key_with_types_and_paths(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "resumes.toml").write_text(FULL, encoding="utf-8")
    job = load_job(jobs / "resumes.toml")

    assert job.file == (jobs / "resumes.toml").resolve()
    assert job.input.path == (tmp_path / "data" / "resumes.jsonl").resolve()
    assert (job.input.format, job.input.key) == ("jsonl", "id")
    t = job.task
    assert t.model == "openai/gpt-oss-20b"
    assert t.prompt.endswith("${experience}") and t.system_message == "You help ${name}."
    assert (t.max_new_tokens, t.temperature, t.top_p, t.top_k, t.seed) == (300, 0.05, 0.5, 10, 7)
    assert (t.user, t.chat_history, t.prompt_images) == ("batch", "history", "photo")
    lim = job.limits
    assert (lim.requests_per_minute, lim.tokens_per_minute, lim.concurrency, lim.max_attempts) == (
        30, 8000, 16, 3)
    assert lim.request_timeout == 30.0 and isinstance(lim.request_timeout, float)
    assert job.output.path == (jobs / "out" / "resumes.csv").resolve()
    assert (job.output.format, job.output.text_column) == ("csv", "resume_format")
    assert job.api.base_url == "http://localhost:8080/v1/"
    assert job.state.path == (jobs / "state" / "run.sqlite").resolve()
    assert output_columns(job) == ("resume_format", *ANSWER_COLUMNS)


def test_paths_are_relative_to_the_job_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = job_with(MINIMAL, tmp_path / "jobs" / "x.toml")
    assert job.input.path == (tmp_path / "jobs" / "data" / "rows.csv").resolve()


def test_defaults() -> None:
    job = job_with(MINIMAL, Path("/srv/jobs/x.toml"))
    assert job.input.format == "csv" and job.input.key is None
    assert job.task.system_message == "You are a helpful assistant."
    assert job.task.temperature is None and job.task.seed is None and job.task.max_new_tokens is None
    assert (job.limits.requests_per_minute, job.limits.tokens_per_minute) == (None, None)
    assert (job.limits.concurrency, job.limits.max_attempts, job.limits.request_timeout) == (8, 6, 120.0)
    assert job.output.path == Path("/srv/jobs/data/rows.enriched.parquet")
    assert (job.output.format, job.output.text_column) == ("parquet", "text")
    assert job.state.path == Path("/srv/jobs/data/rows.enriched.parquet.state.sqlite")
    assert job.api.base_url is None


def test_zero_temperature_and_seed_are_kept() -> None:
    job = job_with(with_task("temperature = 0", "seed = 0", "top-p = 0"))
    assert job.task.temperature == 0 and job.task.temperature is not None
    assert job.task.seed == 0 and job.task.seed is not None
    assert job.task.top_p == 0.0


def test_float_keys_accept_toml_integers() -> None:
    job = job_with(with_task("temperature = 2", "top-p = 1"))
    assert job.task.temperature == 2.0 and isinstance(job.task.temperature, float)


def test_state_path_default_follows_an_explicit_output() -> None:
    job = job_with(MINIMAL + '[output]\npath = "/tmp/o/answers.pq"\n', Path("/srv/jobs/x.toml"))
    assert job.output.path == Path("/tmp/o/answers.pq") and job.output.format == "parquet"
    assert job.state.path == Path("/tmp/o/answers.pq.state.sqlite")


# --- problems ------------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    text = with_task("temprature = 1", "top-p = 1.5", "seed = 1.5") + "[limits]\nconcurrency = 0\n"
    found = problems(text)
    assert len(found) == 4
    assert all(p.startswith("jobs/x.toml: [") for p in found)
    with pytest.raises(JobError) as info:  # exit code 2 comes with it
        parse_job(text, Path("jobs/x.toml"))
    assert info.value.exit_code == 2 and str(info.value).count("\n") == 3


def test_did_you_mean_for_a_typo() -> None:
    assert one_problem(with_task("temprature = 1")) == (
        "jobs/x.toml: [task] temprature: unknown key; did you mean 'temperature'?")


def test_did_you_mean_for_snake_case() -> None:
    assert one_problem(with_task("max_new_tokens = 10")) == (
        "jobs/x.toml: [task] max_new_tokens: unknown key; did you mean 'max-new-tokens'?")


def test_did_you_mean_points_to_the_right_table() -> None:
    assert "did you mean [limits] concurrency?" in one_problem(with_task("concurrency = 3"))


def test_unknown_table() -> None:
    assert one_problem(MINIMAL + "[limit]\nconcurrency = 2\n") == (
        "jobs/x.toml: [limit]: unknown table; did you mean [limits]?")


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    assert "known keys: path, text-column" in one_problem(MINIMAL + "[output]\nbanana = 1\n")


@pytest.mark.parametrize(("line", "expected"), [
    ('concurrency = "8"', 'must be an integer, got "8" (a string)'),
    ("concurrency = true", "must be an integer, got true (a boolean)"),
    ("concurrency = 8.0", "must be an integer, got 8.0 (a float)"),
    ("request-timeout = false", "must be a number, got false (a boolean)"),
    ("requests-per-minute = [30]", "must be an integer, got [30] (an array)"),
])
def test_wrong_types(line: str, expected: str) -> None:
    key = line.split(" =")[0]
    assert one_problem(MINIMAL + f"[limits]\n{line}\n") == f"jobs/x.toml: [limits] {key}: {expected}"


def test_huge_integers_do_not_crash() -> None:
    assert job_with(with_task("seed = 1" + "0" * 400)).task.seed == 10**400
    assert one_problem(with_task("max-new-tokens = -1" + "0" * 400)).startswith(
        "jobs/x.toml: [task] max-new-tokens: must be at least 1, got -1000")


def test_wrong_type_for_a_string() -> None:
    assert one_problem(with_task("user = 5")).endswith("[task] user: must be a string, got 5 (an integer)")


@pytest.mark.parametrize(("line", "expected"), [
    ("temperature = 2.5", "[task] temperature: must be between 0 and 2, got 2.5"),
    ("temperature = -0.1", "[task] temperature: must be between 0 and 2, got -0.1"),
    ("top-p = 1.5", "[task] top-p: must be between 0 and 1, got 1.5"),
    ("max-new-tokens = -5", "[task] max-new-tokens: must be at least 1, got -5"),
    ("top-k = 0", "[task] top-k: must be at least 1, got 0"),
    ("temperature = nan", "[task] temperature: must be between 0 and 2, got nan"),
])
def test_task_ranges(line: str, expected: str) -> None:
    assert one_problem(with_task(line)) == f"jobs/x.toml: {expected}"


@pytest.mark.parametrize(("line", "expected"), [
    ("concurrency = 0", "concurrency: must be between 1 and 1024, got 0"),
    ("concurrency = 1025", "concurrency: must be between 1 and 1024, got 1025"),
    ("max-attempts = 101", "max-attempts: must be between 1 and 100, got 101"),
    ("request-timeout = 0", "request-timeout: must be greater than 0, got 0.0"),
    ("tokens-per-minute = -1", "tokens-per-minute: must be at least 1, got -1"),
])
def test_limits_ranges(line: str, expected: str) -> None:
    assert one_problem(MINIMAL + f"[limits]\n{line}\n") == f"jobs/x.toml: [limits] {expected}"


def test_missing_required_keys() -> None:
    found = problems('[input]\n[task]\nprompt = "x"\n')
    assert found == [
        'jobs/x.toml: [input] path: required key is missing (e.g. path = "data/rows.csv")',
        'jobs/x.toml: [task] model: required key is missing (e.g. model = "openai/gpt-oss-20b")',
    ]


def test_missing_required_tables() -> None:
    assert problems("") == [
        "jobs/x.toml: [input]: required table is missing (add [input] with path)",
        "jobs/x.toml: [task]: required table is missing (add [task] with model and prompt)",
    ]


def test_a_table_given_as_a_value() -> None:
    assert "[input]: must be a table" in problems('input = "rows.csv"\n[task]\nmodel="m"\nprompt="p"\n')[0]


def test_empty_strings_are_problems() -> None:
    assert one_problem(MINIMAL.replace('"openai/gpt-oss-20b"', '""')) == (
        "jobs/x.toml: [task] model: must not be empty")
    assert "text-column: must not be empty" in one_problem(MINIMAL + '[output]\ntext-column = ""\n')


def test_toml_syntax_error_names_file_and_position() -> None:
    (problem,) = problems("[input\npath = 1\n")
    assert problem.startswith("jobs/x.toml: invalid TOML: ") and "line 1" in problem


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_job(tmp_path / "nope.toml")
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: job file not found"]


def test_messages_use_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.toml").write_text(with_task("temperature = 3"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_job(Path("j.toml"))
    assert info.value.problems[0].startswith("j.toml: [task] temperature:")


@pytest.mark.parametrize("text", [
    MINIMAL + '[api]\napi-key = "gsk_secret123"\n',
    MINIMAL + '[api]\nkey = "gsk_secret123"\n',
    MINIMAL + '[api]\napi_key = "gsk_secret123"\n',
    'api-key = "gsk_secret123"\n' + MINIMAL,
    with_task('api-key = "gsk_secret123"'),
])
def test_secrets_never_live_in_job_files(text: str) -> None:
    problem = one_problem(text)
    assert "secrets never live in job files" in problem and "GROQ_API_KEY" in problem
    assert "gsk_secret123" not in problem  # the message must not leak it


def test_a_key_pasted_into_another_value_is_caught_and_not_echoed() -> None:
    problem = one_problem(with_task('user = "gsk_secret123"'))
    assert "GROQ_API_KEY" in problem and "gsk_secret123" not in problem


def test_input_key_is_a_column_not_a_secret() -> None:
    assert job_with(MINIMAL.replace("[task]", 'key = "id"\n[task]')).input.key == "id"


@pytest.mark.parametrize("column", ["error", "input_tokens", "model"])
def test_text_column_must_not_be_an_answer_column(column: str) -> None:
    problem = one_problem(MINIMAL + f'[output]\ntext-column = "{column}"\n')
    assert problem.startswith(f'jobs/x.toml: [output] text-column: "{column}" is one of the answer columns')


@pytest.mark.parametrize("name", ["out.xlsx", "out.json", "out"])
def test_output_extension_must_be_parquet_or_csv(name: str) -> None:
    assert one_problem(MINIMAL + f'[output]\npath = "{name}"\n') == (
        f'jobs/x.toml: [output] path: must end in .parquet, .pq or .csv, got "{name}"')


def test_output_must_not_overwrite_the_input() -> None:
    assert "is the input file" in one_problem(MINIMAL.replace("rows.csv", "rows.parquet")
                                              + '[output]\npath = "data/rows.parquet"\n')


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.csv", "csv"), ("a.CSV", "csv"), ("a.parquet", "parquet"), ("a.pq", "parquet"),
    ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
])
def test_format_is_inferred_from_the_extension(name: str, fmt: str) -> None:
    assert job_with(MINIMAL.replace("data/rows.csv", name)).input.format == fmt


def test_explicit_format_overrides_the_extension() -> None:
    text = MINIMAL.replace('path = "data/rows.csv"', 'path = "rows.txt"\nformat = "Parquet"')
    job = job_with(text)
    assert job.input.format == "parquet"
    assert job.output.path.name == "rows.enriched.parquet"


def test_unknown_extension_without_format() -> None:
    assert one_problem(MINIMAL.replace("rows.csv", "rows.txt")) == (
        'jobs/x.toml: [input] format: cannot tell the format of "data/rows.txt" from its extension; '
        'set format = "csv", "parquet" or "jsonl"')


def test_unknown_format() -> None:
    assert one_problem(MINIMAL.replace("[task]", 'format = "xlsx"\n[task]')) == (
        'jobs/x.toml: [input] format: must be one of "csv", "parquet", "jsonl", got "xlsx" (a string)')


def test_base_url_must_be_http() -> None:
    assert one_problem(MINIMAL + '[api]\nbase-url = "localhost:8080"\n').startswith(
        "jobs/x.toml: [api] base-url: must start with http:// or https://")


# --- templates -----------------------------------------------------------------------------------------


def test_template_placeholders_and_literals() -> None:
    assert parse_template("Hi ${name}, see ${ex}.") == ["Hi ", Placeholder("name"), ", see ",
                                                        Placeholder("ex"), "."]
    assert parse_template("${a}${b}") == [Placeholder("a"), Placeholder("b")]
    assert parse_template("") == []


def test_template_dollar_rules() -> None:
    assert parse_template("costs $$5 or $5, $") == ["costs $5 or $5, $"]
    assert parse_template("$${name}") == ["${name}"]  # an escaped placeholder stays literal
    assert parse_template("$$${x}") == ["$", Placeholder("x")]
    assert parse_template("$$$${x}") == ["$${x}"]


def test_template_braces_without_dollar_are_literal() -> None:
    assert parse_template('JSON: {"a": {0}} {braces}') == ['JSON: {"a": {0}} {braces}']
    assert parse_template("${col name with spaces}") == [Placeholder("col name with spaces")]


@pytest.mark.parametrize(("template", "message"), [
    ("Hi ${name", "unterminated '${' at line 1, column 4"),
    ("a\nb ${x ${y}", "unterminated '${' at line 2, column 3"),
    ("${}", "empty placeholder '${}' at line 1, column 1"),
])
def test_malformed_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("$", r"\$").replace("{", r"\{")):
        parse_template(template)


def test_template_columns_in_order_without_duplicates() -> None:
    assert template_columns("${b} ${a} $${c} ${b}") == ["b", "a"]


def test_malformed_prompt_and_system_message_are_problems() -> None:
    found = problems(MINIMAL.replace("${text}", "${text") + 'system-message = "${}"\n')
    assert found[0].startswith("jobs/x.toml: [task] prompt: unterminated '${'")
    assert found[1].startswith("jobs/x.toml: [task] system-message: empty placeholder")


# --- base URL ------------------------------------------------------------------------------------------


def test_resolve_base_url_precedence() -> None:
    plain = job_with(MINIMAL)
    with_api = job_with(MINIMAL + '[api]\nbase-url = "http://job:1/v1/"\n')
    env = {"GROQ_BASE_URL": "http://env:2/"}
    assert resolve_base_url("http://cli:3/v1/", with_api, env) == "http://cli:3/v1"
    assert resolve_base_url(None, with_api, env) == "http://job:1/v1"
    assert resolve_base_url(None, plain, env) == "http://env:2/openai/v1"
    assert resolve_base_url(None, plain, {"GROQ_BASE_URL": "https://api.groq.com"}) == DEFAULT_BASE_URL
    assert resolve_base_url(None, plain, {}) == DEFAULT_BASE_URL == "https://api.groq.com/openai/v1"
    assert resolve_base_url("", plain, {"GROQ_BASE_URL": ""}) == DEFAULT_BASE_URL


def test_resolve_base_url_rejects_a_non_http_cli_value() -> None:
    with pytest.raises(ConfigError, match="--base-url: must start with http"):
        resolve_base_url("localhost:8080", job_with(MINIMAL), {})


# --- documentation -------------------------------------------------------------------------------------


def test_describe_keys_lists_every_key() -> None:
    rows = describe_keys().splitlines()
    assert len(rows) == 2 + sum(len(keys) for keys in TABLES.values())
    assert "| `[task]` | `temperature` | number, between 0 and 2 |  |" in describe_keys()
    assert "| `[limits]` | `concurrency` | integer, between 1 and 1024 | `8` |" in describe_keys()


def test_every_key_maps_to_a_dataclass_field() -> None:
    # parse_job builds TaskSpec/LimitsSpec/ApiSpec from the key names: a typo in TABLES would break it.
    job = job_with(FULL)
    for table in ("task", "limits", "api"):
        fields = set(vars(getattr(job, table)))
        assert {k.name.replace("-", "_") for k in TABLES[table]} == fields
