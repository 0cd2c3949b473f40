"""The README documents what the code enforces: its job-file table is the one the validator walks."""

from __future__ import annotations

import tomllib
from pathlib import Path

from batch.job.config import describe_keys, load_job

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_job_key_as_enforced() -> None:
    assert describe_keys() in README


def test_readme_quickstart_is_two_commands_that_exist() -> None:
    block = README.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert commands == ['pip install . && python -m batch run jobs/resumes.toml --simulate',
                        'pip install ".[test]" && python -m pytest']
    assert (ROOT / "jobs" / "resumes.toml").is_file()


def test_readme_example_job_is_valid(tmp_path: Path) -> None:
    example = README.split("## The job file", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    tomllib.loads(example)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.toml").write_text(example, encoding="utf-8")
    job = load_job(tmp_path / "jobs" / "job.toml")
    assert job.task.temperature == 0.05 and job.output.text_column == "resume_format"


def test_sample_job_is_the_star_resume_recipe() -> None:
    job = load_job(ROOT / "jobs" / "resumes.toml")
    t = job.task
    assert (t.model, t.system_message, t.max_new_tokens, t.temperature, t.top_k, t.top_p) == (
        "openai/gpt-oss-20b", "You are a helpful resume assistant.", 300, 0.05, 10, 0.5)
    assert job.input.path == ROOT / "data" / "resumes.csv"
