"""Chat history and images on the wire: Groq's exact schema from Parquet lists and from CSV JSON text;
malformed histories fail their row only; every decommissioned model is refused before sending."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, LocalServer, completion

from batch.engine.preflight import check_job
from batch.errors import JobError
from batch.job import catalog
from batch.job.config import parse_job
from batch.render.messages import RowProblem, history

WriteJob = Callable[..., Path]
RunBatch = Callable[..., Any]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()
HISTORY = [{"role": "user", "content": "My name is Ana."}, {"role": "assistant", "content": "Hello Ana!"}]
SYSTEM = {"role": "system", "content": "Be brief."}


class Capture(LocalServer):
    """Keeps every request body; answers with a fixed completion."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return completion("ok")


def expected(row: int) -> list[dict[str, Any]]:
    """The messages each row of the inputs below must send."""
    if row == 0:  # history and two images: history first, images before the prompt text, no system
        return [*HISTORY, {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "What is my name?"}]}]
    return [SYSTEM, {"role": "user", "content": "Plain question"}]  # no history, no image


def run(tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch,
        input_name: str) -> list[dict[str, Any]]:
    server = Capture()
    url = background_loop.run(server.start())
    job = write_job(input_name, task={"prompt": "${q}", "system-message": "Be brief.", "chat-history": "hist",
                                      "prompt-images": "imgs"}, limits={"concurrency": 1})
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 0, proc.stderr
    return sorted(server.bodies, key=lambda b: len(b["messages"]), reverse=True)


def test_parquet_list_columns_are_sent_in_groqs_schema(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    table = pa.table({
        "q": ["What is my name?", "Plain question"],
        "hist": pa.array([HISTORY, None], pa.list_(message)),
        "imgs": pa.array([["https://example.test/a.png", PNG], None], pa.list_(pa.string())),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    bodies = run(tmp_path, background_loop, write_job, run_batch, "in.parquet")
    assert [b["messages"] for b in bodies] == [expected(0), expected(1)]


def test_csv_json_text_history_is_sent_in_groqs_schema(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    import csv

    with (tmp_path / "in.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["q", "hist", "imgs"])
        w.writerow(["What is my name?", json.dumps(HISTORY), json.dumps(["https://example.test/a.png", PNG])])
        w.writerow(["Plain question", "", ""])  # empty history and images: none
    bodies = run(tmp_path, background_loop, write_job, run_batch, "in.csv")
    assert [b["messages"] for b in bodies] == [expected(0), expected(1)]


@pytest.mark.parametrize(("value", "why"), [
    ('[{"role": "user", "content": "hi"', "not valid JSON"),
    ('[{"role": "wizard", "content": "hi"}]', "role must be one of"),
    ('{"role": "user", "content": "hi"}', "must be a list"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}],
     "only user messages may hold images"),
    ([{"role": "user", "content": "hi", "name": "ana"}], "unsupported field"),
])
def test_a_malformed_history_fails_its_row_with_the_reason(value: object, why: str) -> None:
    with pytest.raises(RowProblem, match=why):
        history(value, "hist")


def test_a_malformed_history_does_not_stop_the_run(
        tmp_path: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    server = Capture()
    url = background_loop.run(server.start())
    (tmp_path / "in.csv").write_text('q,hist\nfirst,"[{""role"": ""robot"", ""content"": ""x""}]"\nsecond,\n',
                                     encoding="utf-8")
    job = write_job("in.csv", task={"prompt": "${q}", "chat-history": "hist"})
    proc = run_batch(job, "--base-url", url)
    assert proc.returncode == 1, proc.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert "input row 1" in out[0]["error"] and "role must be one of" in out[0]["error"]
    assert out[1]["error"] is None and out[1]["text"] == "ok"
    assert len(server.bodies) == 1


@pytest.mark.parametrize("model", sorted(catalog.DECOMMISSIONED))
def test_every_decommissioned_model_is_refused_before_sending(tmp_path: Path, model: str) -> None:
    (tmp_path / "in.csv").write_text("q\nhello\n", encoding="utf-8")
    job = parse_job(f'[input]\npath = "in.csv"\n[task]\nmodel = "{model}"\nprompt = "${{q}}"\n',
                    tmp_path / "job.toml")
    with pytest.raises(JobError, match="decommissioned") as err:
        check_job(job)
    assert catalog.DECOMMISSIONED[model] in str(err.value)
