"""Groq's quirks (docs/groq.md), each imitated by the simulator and met by batch:

- a plan without the Batch API: 403 `not_available_for_plan` from /files and /batches; a batch-mode
  run exits 4 and says to run online;
- a finished batch without an error file that shows `"error_file_id": {}` instead of null;
- reasoning: the gpt-oss models refuse `reasoning_format` (they take `include_reasoning`), and `raw`
  reasoning with JSON mode is a 400; batch refuses both at validation (exit 2, nothing sent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import groq
import pandas as pd
import pytest
from conftest import HANG_GUARD_S, wait_until
from nasty import write_csv
from test_e2e import PROMPT, plain_rows, read_output

import batch
from batch.errors import ConfigError, JobError
from batch.job.config import parse_job
from batch.sim import SimConfig, Simulator, add_cli_arguments, config_from_args

StartSim = Callable[..., tuple[str, Simulator]]
WriteJob = Callable[..., Path]
RunBatch = Callable[..., subprocess.CompletedProcess[str]]
FAST: dict[str, Any] = {"batch_validate_s": 0.05, "batch_finalize_s": 0.05}
GPT_OSS, QWEN = "openai/gpt-oss-20b", "qwen/qwen3.8-27b"
JSONL = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": ' \
        b'"openai/gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}]}}\n'


@pytest.fixture
def connect() -> Iterator[Callable[[str], groq.Groq]]:
    """Groq's own SDK on a simulator's base URL (it appends /openai/v1 itself)."""
    clients: list[groq.Groq] = []

    def connect(base_url: str) -> groq.Groq:
        clients.append(groq.Groq(api_key="gsk_test", base_url=base_url.removesuffix("/openai/v1"),
                                 max_retries=0, timeout=HANG_GUARD_S))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


# -- a plan without the Batch API -------------------------------------------------------------------


def test_the_simulator_refuses_every_batch_call_on_a_plan_without_the_batch_api(
        start_sim: StartSim, connect: Callable[[str], groq.Groq]) -> None:
    url, sim = start_sim(batch_available=False)
    client = connect(url)
    for call in (lambda: client.files.create(file=("rows.jsonl", JSONL), purpose="batch"),
                 lambda: client.batches.create(input_file_id="file_x", endpoint="/v1/chat/completions",
                                               completion_window="24h"),
                 client.batches.list, client.files.list):
        with pytest.raises(groq.PermissionDeniedError) as info:
            call()
        assert info.value.status_code == 403
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["code"] == "not_available_for_plan"
    assert sim.uploads == 0 and sim.batches_created == 0
    # Online requests are not the Batch API: they still work.
    answer = client.chat.completions.create(model=GPT_OSS, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


def test_batch_mode_on_a_plan_without_it_exits_4_and_says_to_run_online(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST, batch_available=False)
    write_csv(plain_rows(5), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run={"mode": "batch", "poll-interval": 0.2})

    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 4, proc.stderr
    assert "not_available_for_plan" in proc.stderr and 'mode = "online"' in proc.stderr
    assert "Batch API is not available on this account's plan" in proc.stderr
    assert sim.log == [] and sim.uploads == 0, "nothing may be sent when the plan has no Batch API"
    assert not (tmp_path / "out.parquet").exists()

    online = run_batch(job, "--base-url", url, "--mode", "online")  # what the message says to do
    assert online.returncode == 0, online.stderr
    assert [r["error"] for r in read_output(tmp_path / "out.parquet")[1]] == [None] * 5


# -- "error_file_id": {} ------------------------------------------------------------------------------


def _raw_batch(url: str, batch_id: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/batches/{batch_id}", headers={"Authorization": "Bearer gsk_t"})
    with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def test_the_simulator_can_show_an_empty_object_for_no_error_file(
        start_sim: StartSim, connect: Callable[[str], groq.Groq]) -> None:
    url, _ = start_sim(**FAST, batch_lines_per_s=5000.0, batch_empty_error_file_id=True)
    client = connect(url)
    file_id = client.files.create(file=("rows.jsonl", JSONL), purpose="batch").id
    assert file_id is not None
    made = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    assert _raw_batch(url, made.id)["error_file_id"] is None  # not before it ends
    wait_until(lambda: _raw_batch(url, made.id)["status"] == "completed", "the batch to complete")
    shown = _raw_batch(url, made.id)
    assert shown["error_file_id"] == {} and isinstance(shown["output_file_id"], str)


def test_a_batch_with_an_empty_object_for_its_error_file_is_merged_as_having_none(
        tmp_path: Path, start_sim: StartSim, write_job: WriteJob, run_batch: RunBatch) -> None:
    url, sim = start_sim(**FAST, batch_empty_error_file_id=True)
    write_csv(plain_rows(20), tmp_path / "in.csv")
    job = write_job("in.csv", task={"prompt": PROMPT}, run={"mode": "batch", "poll-interval": 0.2})
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    (made,) = sim.batches.values()
    assert made.status == "completed" and made.error_file_id is None and made.empty_error_file_id
    out = read_output(tmp_path / "out.parquet")[1]
    assert [r["error"] for r in out] == [None] * 20 and all(r["text"] for r in out)
    assert sim.log == []


def test_the_quirks_are_simulate_options() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    default = config_from_args(parser.parse_args([]))
    assert (default.batch_available, default.batch_empty_error_file_id) == (True, False)
    quirky = config_from_args(parser.parse_args(["--no-batch-api", "--batch-empty-error-file-id"]))
    assert (quirky.batch_available, quirky.batch_empty_error_file_id) == (False, True)
    assert SimConfig().batch_available


# -- reasoning settings Groq refuses ------------------------------------------------------------------

HEAD = """
[input]
path = "rows.csv"
[task]
model = "{model}"
prompt = "Summarise: ${{text}}"
"""


def problems(model: str, extra: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job(HEAD.format(model=model) + extra, tmp_path / "job.toml")
    return str(info.value)


@pytest.mark.parametrize(("fmt", "instead"), [("hidden", "include-reasoning = false"),
                                              ("parsed", "include-reasoning = true"),
                                              ("raw", "include-reasoning = true")])
def test_gpt_oss_refuses_reasoning_format_and_is_told_include_reasoning(tmp_path: Path, fmt: str,
                                                                       instead: str) -> None:
    for model in (GPT_OSS, "openai/gpt-oss-120b"):
        message = problems(model, f'reasoning-format = "{fmt}"\n', tmp_path)
        assert "[task] reasoning-format" in message and model in message
        assert f"set {instead}" in message
    both = problems(GPT_OSS, 'reasoning-format = "hidden"\ninclude-reasoning = false\n', tmp_path)
    assert len(both.splitlines()) == 1 and "remove reasoning-format" in both
    ok = parse_job(HEAD.format(model=GPT_OSS) + "include-reasoning = false\n", tmp_path / "job.toml")
    assert ok.task.include_reasoning is False


JSON_MODES = ['{type = "json_object"}', '{type = "json_schema", name = "n", schema = {type = "object"}}']


@pytest.mark.parametrize("response_format", JSON_MODES)
def test_raw_reasoning_with_json_mode_is_refused(tmp_path: Path, response_format: str) -> None:
    message = problems(QWEN, f'reasoning-format = "raw"\nresponse-format = {response_format}\n', tmp_path)
    assert "[task] reasoning-format" in message and '"raw"' in message
    assert '"parsed"' in message and '"hidden"' in message
    for fine in ("parsed", "hidden"):
        job = parse_job(HEAD.format(model=QWEN) + f'reasoning-format = "{fine}"\n'
                        f"response-format = {response_format}\n", tmp_path / "job.toml")
        assert job.task.reasoning_format == fine
    assert parse_job(HEAD.format(model=QWEN) + 'reasoning-format = "raw"\n', tmp_path / "job.toml")


def test_each_model_takes_its_reasoning_efforts(tmp_path: Path) -> None:
    assert parse_job(HEAD.format(model=QWEN) + 'reasoning-effort = "high"\n',
                     tmp_path / "job.toml").task.reasoning_effort == "high"
    assert "none, default" in problems("qwen/qwen3.6-27b", 'reasoning-effort = "high"\n', tmp_path)
    assert "low, medium, high" in problems(GPT_OSS, 'reasoning-effort = "none"\n', tmp_path)


def test_a_refused_reasoning_setting_exits_2_and_sends_nothing(tmp_path: Path, write_job: WriteJob,
                                                               run_batch: RunBatch) -> None:
    write_csv(plain_rows(2), tmp_path / "in.csv")
    path = write_job("in.csv", task={"reasoning-format": "parsed"})
    proc = run_batch(path, "--base-url", "http://127.0.0.1:9/v1")  # nothing listens there
    assert proc.returncode == 2, proc.stderr
    assert "reasoning-format" in proc.stderr and "include-reasoning = true" in proc.stderr


def test_the_python_door_names_the_option_it_refuses() -> None:
    frame = pd.DataFrame({"text": ["a"]})
    with pytest.raises(JobError) as info:
        batch.run(frame, model=QWEN, prompt="${text}", reasoning_format="raw",
                  response_format={"type": "json_object"}, simulate=True, progress=False)
    assert "reasoning_format=" in str(info.value) and '"parsed"' in str(info.value)


@pytest.mark.parametrize(("model", "params"), [
    (GPT_OSS, {"reasoning_format": "parsed"}),
    ("openai/gpt-oss-120b", {"reasoning_format": "hidden"}),
    (QWEN, {"reasoning_format": "raw", "response_format": {"type": "json_object"}}),
])
def test_the_simulator_answers_groqs_reasoning_400s(start_sim: StartSim, connect: Callable[[str], groq.Groq],
                                                    model: str, params: dict[str, Any]) -> None:
    url, _ = start_sim()
    with pytest.raises(groq.BadRequestError) as info:
        connect(url).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                             **params)
    assert isinstance(info.value.body, dict) and info.value.body["error"]["param"] == "reasoning_format"


def test_the_simulator_takes_the_reasoning_settings_groq_takes(start_sim: StartSim,
                                                                connect: Callable[[str], groq.Groq]) -> None:
    url, _ = start_sim()
    client = connect(url)
    hi: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}],
                          "response_format": {"type": "json_object"}}
    client.chat.completions.create(model=GPT_OSS, include_reasoning=False, **hi)
    client.chat.completions.create(model=QWEN, reasoning_format="parsed", **hi)
