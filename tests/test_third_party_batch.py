"""Batch mode (`--mode batch`) end to end against aimock's Files and Batches endpoints.

`python -m batch run JOB --mode batch --base-url <aimock>` runs as a real subprocess against npm
`@copilotkit/aimock` (its `llmock` CLI, started by tests/test_third_party.py's helpers on 127.0.0.1),
a server batch did not write; the tests read back what aimock holds (its files, batches and journal).
Skipped, like the other third-party tests, when node or aimock is not installed
(`npm ci --prefix tests/thirdparty`).

What aimock 1.43.0 does (read from node_modules/@copilotkit/aimock/dist/batches.js and files.js):

- Routes are `/v1/files[...]` and `/v1/batches[...]`; a leading `/openai` is stripped first, so Groq's
  base URL `.../openai/v1` and OpenAI's `.../v1` reach the same store.
- A batch moves on retrieves, not on time: created `validating`; the 1st `GET /batches/{id}` answers
  `in_progress`, the 2nd (and later) its outcome. `cancel` answers `cancelling`, the next retrieve
  `cancelled`. `GET /batches` (the list) does not move a batch.
- The outcome is chosen per batch by an `X-AIMock-Batch-Outcome` header on `POST /batches`
  (`completed` by default, `failed`, `expired`, `cancelled`). batch sends no such header, so the tests
  that need another outcome put `HeaderProxy` (below, on loopback) between the CLI and aimock: it
  forwards every request untouched except for the headers a test adds. The same header family injects
  aimock's chaos on the files/batches routes (`X-AIMock-Chaos-Drop` 500, `-Malformed` a 200 that is not
  JSON, `-Ratelimit` 429 with `Retry-After: 1`, `-Disconnect`), rolled before the route acts.
- A completed batch gets a real output file: one line per input line, the input's `custom_id`, a fresh
  `response.request_id` (`req_...`) and a canned chat completion for the request's model.

Where aimock differs from Groq's Batch API (docs/groq.md, "Batch API"); these are aimock's, not
batch's, and the tests assert them as aimock's behaviour rather than bend batch to them:

- Batch lines never consult fixtures: every answer is "Mock batch completion" (usage 1 in, 1 out). So a
  row's answer is identified by its request id, traced through aimock's own input and output files
  (custom_id -> prompt, custom_id -> request id). The fixtures (thirdparty/aimock-batch-fixtures.json)
  answer only the online fallback for expired requests, each row its own text.
- `completion_window` must be "24h" (Groq accepts 24h to 7d): anything else is a 400.
- `failed` means "every line failed": status `failed` with one `errors` entry naming no line, plus an
  error file failing each line (`response: null, error: {code: "mock_failure"}`). Groq's `failed` is a
  validation failure whose `errors` name the lines. aimock cannot make a `completed` batch with some
  lines in its error file (how Groq reports a request that failed), so that case stays with our
  simulator (tests/test_batch_mode.py).
- `expired` and `cancelled` batches have no output or error file at all (Groq lists the unanswered
  requests in the error file); the status alone says nothing was answered.
- No `finalizing` status (batch does not wait for one).

One bug in batch was found this way (fixed in batch/batchapi/download.py: each download is checked): an output
download whose body is not JSONL (aimock's malformed chaos) was merged as "completed without a result",
marking the batch done and leaving every request in it to be submitted, and paid for, again.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, cli_env
from test_third_party import MODEL, Server, _aimock, _http, _stop

from batch.store.answers import Store

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]

FIXTURES = "aimock-batch-fixtures.json"  # chat answers for the online fallback; also lists MODEL
WORDS = ["batch row alpha", "batch row bravo", "batch row charlie", "batch row delta", "batch row echo"]
ONLINE = {w: (f"{w.split()[-1].capitalize()} answered online.", 21 + i) for i, w in enumerate(WORDS)}
RUN = {"mode": "batch", "poll-interval": 0.2}  # polls at 1 s, then every 0.2 s: a run takes ~1-2 s
MOCK_TEXT = "Mock batch completion"  # aimock's one answer for every batch line
PREFIXES = {"groq": "/openai/v1", "openai": "/v1"}


def prompt(word: str) -> str:
    return f"Answer for {word}, please."


# -- aimock and what it holds ------------------------------------------------------------------------

@pytest.fixture
def aimock(tmp_path: Path) -> Iterator[Server]:
    """A fresh aimock per test: its files, batches and journal are this test's alone."""
    server = _aimock(FIXTURES, tmp_path / "aimock.log")
    try:
        yield server
    finally:
        _stop(server.proc)


def _get(server: Server, path: str) -> Any:
    status, body = _http("GET", server.root + path)
    assert status == 200, (path, body[:300])
    return json.loads(body)


def batches(server: Server) -> list[dict[str, Any]]:
    """aimock's batches, oldest first (its list is newest first)."""
    found: list[dict[str, Any]] = _get(server, "/v1/batches?limit=100")["data"]
    return found[::-1]


def files(server: Server, purpose: str = "batch") -> list[dict[str, Any]]:
    return [f for f in _get(server, "/v1/files?limit=100")["data"] if f["purpose"] == purpose]


def jsonl(server: Server, file_id: str) -> list[dict[str, Any]]:
    status, body = _http("GET", f"{server.root}/v1/files/{file_id}/content")
    assert status == 200, body[:300]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def journal(server: Server) -> list[dict[str, Any]]:
    """The requests batch sent aimock (files, batches, chat), oldest first: those with an Authorization
    header, which the test's own look-ups here do not send."""
    entries: list[dict[str, Any]] = _get(server, "/__aimock/journal")
    return [e for e in entries if e["headers"].get("authorization")]


def calls(entries: list[dict[str, Any]]) -> Counter[str]:
    """'METHOD route' counts, ids replaced by {id}: what the client asked of aimock."""
    return Counter(f"{e['method']} " + re.sub(r"/(file|batch)-[\w-]+", r"/{id}",
                                              re.sub(r"^/(openai/)?v1", "", e["path"]))
                   for e in entries)


def statuses(entries: list[dict[str, Any]], call: str) -> list[int]:
    """The statuses aimock answered one kind of call with (0: it dropped the connection)."""
    return [e["response"]["status"] for e in entries if calls([e]) == {call: 1}]


def chat_requests(server: Server) -> list[dict[str, Any]]:
    return [e for e in journal(server) if "chat/completions" in e["path"]]


def answer_ids(server: Server, batch: dict[str, Any]) -> dict[str, str]:
    """prompt -> the request id aimock gave that prompt's line, read from aimock's own files."""
    prompts = {line["custom_id"]: line["body"]["messages"][-1]["content"]
               for line in jsonl(server, batch["input_file_id"])}
    ids = {line["custom_id"]: line["response"]["request_id"]
           for line in jsonl(server, batch["output_file_id"])}
    assert ids.keys() == prompts.keys()
    return {prompts[c]: ids[c] for c in prompts}


# -- a header-adding proxy: aimock's per-request levers ----------------------------------------------

@dataclass
class Rule:
    """Add `headers` to requests of `method` whose path matches `path`, the next `times` of them."""

    method: str
    path: str
    headers: dict[str, str]
    times: int = 1


_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class HeaderProxy:
    """Forwards every request to aimock unchanged, adding the headers of the first matching rule."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.app = web.Application(client_max_size=200 * 1024**2)
        self.app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(self.app)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        self.session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        for rule in self.rules:
            if rule.times > 0 and rule.method == request.method and re.search(rule.path, request.path):
                rule.times -= 1
                headers.update(rule.headers)
                break
        try:
            async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                            headers=headers, allow_redirects=False) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
                return web.Response(status=resp.status, body=payload, headers=out)
        except aiohttp.ClientError:  # aimock dropped the connection: drop the client's too
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)


@pytest.fixture
def proxy(aimock: Server) -> Iterator[tuple[str, HeaderProxy]]:
    """(root URL, proxy) in front of this test's aimock."""
    loop = BackgroundLoop()
    hp = HeaderProxy(aimock.root)
    try:
        yield loop.run(hp.start()), hp
    finally:
        try:
            loop.run(hp.stop())
        finally:
            loop.close()


# -- the job -----------------------------------------------------------------------------------------

def make_job(tmp_path: Path, write_job: WriteJob, run: dict[str, Any] | None = None,
             words: list[str] = WORDS) -> Path:
    with (tmp_path / "in.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "word"])
        w.writerows([i, word] for i, word in enumerate(words, 1))
    return write_job("in.csv", input={"key": "id"},
                     task={"prompt": "Answer for ${word}, please.", "max-new-tokens": 20},
                     run={**RUN, **(run or {})})


def output(tmp_path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(tmp_path / "out.parquet").to_pylist()
    return rows


def batch_cli(tmp_path: Path, command: str, job: Path, *args: str, key: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    """`python -m batch status|cancel JOB ...`."""
    return subprocess.run([sys.executable, "-m", "batch", command, str(job), *args], cwd=tmp_path,
                          env=cli_env(key), capture_output=True, text=True, encoding="utf-8", timeout=60,
                          stdin=subprocess.DEVNULL)


def check_batch_answers(server: Server, batch: dict[str, Any], rows: list[dict[str, Any]],
                        words: list[str] = WORDS) -> None:
    """Every row answered from the batch line that carried its own prompt."""
    assert [r["word"] for r in rows] == words
    ids = answer_ids(server, batch)
    for r in rows:
        where = f"row {r['id']} ({r['word']})"
        assert r["error"] is None, f"{where}: {r['error']}"
        assert r["text"] == MOCK_TEXT, where
        assert r["request_id"] == ids[prompt(r["word"])], f"{where}: another line's answer"
        assert (r["input_tokens"], r["output_tokens"], r["total_tokens"]) == (1, 1, 2), where
        assert (r["finish_reason"], r["model"], r["attempts"], r["latency_s"]) == ("stop", MODEL, 1, None)
    assert len({r["request_id"] for r in rows}) == len(rows)


# -- the tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", PREFIXES)
def test_every_row_is_answered_through_files_and_batches_alone(
        api: str, tmp_path: Path, aimock: Server, write_job: WriteJob, run_batch: RunBatch,
        api_key: str) -> None:
    base_url = aimock.root + PREFIXES[api]
    job = make_job(tmp_path, write_job, {"mode": None})  # batch mode by the command line alone
    proc = run_batch(job, "--mode", "batch", "--base-url", base_url)
    assert proc.returncode == 0, proc.stderr

    (batch,) = batches(aimock)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert (batch["endpoint"], batch["completion_window"]) == ("/v1/chat/completions", "24h")
    (upload,) = files(aimock)
    assert upload["id"] == batch["input_file_id"] and upload["filename"].endswith(".jsonl")
    assert batch["metadata"] == {"job": "job.toml", "file": upload["filename"]}
    lines = jsonl(aimock, upload["id"])  # the request lines as aimock stored them
    assert sorted(line["body"]["messages"][-1]["content"] for line in lines) == sorted(map(prompt, WORDS))
    for line in lines:
        assert (line["method"], line["url"], line["body"]["model"]) == ("POST", "/v1/chat/completions", MODEL)
        assert line["body"]["max_completion_tokens"] == 20
    check_batch_answers(aimock, batch, output(tmp_path))

    entries = journal(aimock)
    assert all(e["path"].startswith(PREFIXES[api] + "/") for e in entries), "not under the base URL"
    assert calls(entries) == {"POST /files": 1, "POST /batches": 1, "GET /batches/{id}": 2,
                              "GET /files/{id}/content": 1}, "online requests, or a step repeated"
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert (report["mode"], report["requests_sent"], report["batch_requests"], report["batches"]) == \
        ("batch", 0, 5, 1)

    again = run_batch(job, "--mode", "batch", "--base-url", base_url)  # everything is in the store
    assert again.returncode == 0, again.stderr
    assert journal(aimock) == entries, "the re-run sent requests"
    check_batch_answers(aimock, batch, output(tmp_path))

    status = batch_cli(tmp_path, "status", job, "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["answered"], shown["pending"]) == (5, 0)
    (listed,) = shown["batches"]
    assert (listed["batch_id"], listed["file_id"], listed["file"]) == (batch["id"], upload["id"],
                                                                      upload["filename"])
    assert (listed["status"], listed["merged"], listed["lines"]) == ("completed", True, 5)
    assert listed["counts"] == batch["request_counts"]
    assert api_key not in status.stdout


def test_no_wait_leaves_the_batch_running_then_a_rerun_attaches_to_it(
        tmp_path: Path, aimock: Server, write_job: WriteJob, run_batch: RunBatch) -> None:
    base_url = aimock.root + PREFIXES["groq"]
    job = make_job(tmp_path, write_job)
    first = run_batch(job, "--base-url", base_url, "--no-wait")
    assert first.returncode == 3, first.stderr
    assert "still running" in first.stderr
    (batch,) = batches(aimock)
    assert batch["status"] == "in_progress"  # one retrieve: aimock's first step
    assert not (tmp_path / "out.parquet").exists()

    status = batch_cli(tmp_path, "status", job, "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    (listed,) = shown["batches"]
    assert (listed["batch_id"], listed["status"], listed["merged"]) == (batch["id"], "in_progress", False)
    assert listed["counts"] == {"total": 5, "completed": 0, "failed": 0}
    assert shown["pending"] == 5

    online = run_batch(job, "--base-url", base_url, "--mode", "online")  # would pay twice: refused
    assert online.returncode == 2 and "twice" in online.stderr

    again = run_batch(job, "--base-url", base_url)
    assert again.returncode == 0, again.stderr
    (batch,) = batches(aimock)
    assert batch["status"] == "completed"
    assert calls(journal(aimock)) == {"POST /files": 1, "POST /batches": 1, "GET /batches/{id}": 2,
                                      "GET /files/{id}/content": 1}, "the re-run submitted again"
    check_batch_answers(aimock, batch, output(tmp_path))
    listed = json.loads(batch_cli(tmp_path, "status", job, "--json").stdout)["batches"][0]
    assert (listed["status"], listed["merged"]) == ("completed", True)


def test_a_cancelled_batch_is_collected_and_its_requests_submitted_again(
        tmp_path: Path, aimock: Server, write_job: WriteJob, run_batch: RunBatch, api_key: str) -> None:
    base_url = aimock.root + PREFIXES["groq"]
    job = make_job(tmp_path, write_job)
    assert run_batch(job, "--base-url", base_url, "--no-wait").returncode == 3
    (first,) = batches(aimock)

    cancel = batch_cli(tmp_path, "cancel", job, "--base-url", base_url, key=api_key)
    assert cancel.returncode == 0, cancel.stderr
    assert first["id"] in cancel.stdout and "cancelling" in cancel.stdout
    assert api_key not in cancel.stdout + cancel.stderr

    collect = run_batch(job, "--base-url", base_url)
    assert collect.returncode == 3, collect.stderr
    assert "5 requests were cancelled" in collect.stderr
    assert batches(aimock)[0]["status"] == "cancelled"

    last = run_batch(job, "--base-url", base_url)
    assert last.returncode == 0, last.stderr
    old, new = batches(aimock)
    assert old["id"] == first["id"] and new["status"] == "completed"
    assert len(jsonl(aimock, new["input_file_id"])) == 5
    check_batch_answers(aimock, new, output(tmp_path))
    assert chat_requests(aimock) == []


def test_a_failed_batch_turns_its_error_lines_into_row_errors_retried_by_the_next_run(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    root, hp = proxy
    hp.rules = [Rule("POST", r"/batches$", {"X-AIMock-Batch-Outcome": "failed"})]
    job = make_job(tmp_path, write_job)
    first = run_batch(job, "--base-url", root + PREFIXES["groq"])
    (failed,) = batches(aimock)
    assert failed["status"] == "failed" and failed["error_file_id"]
    errors = jsonl(aimock, failed["error_file_id"])
    assert [e["error"]["code"] for e in errors] == ["mock_failure"] * 5
    # aimock names no line in `errors`: batch reports the batch refused as a whole (exit 4) ...
    assert first.returncode == 4, first.stderr
    assert "Mock batch failure" in first.stderr and failed["id"] in first.stderr
    # ... and each line of its error file became that row's error, retryable, in the store (exit 4
    # writes no output table): keyed by the custom_id aimock echoed, with aimock's message.
    shown = json.loads(batch_cli(tmp_path, "status", job, "--json").stdout)
    assert (shown["failed_retryable"], shown["answered"], shown["pending"]) == (5, 0, 0)
    store = Store(tmp_path / "out.parquet.state.sqlite", readonly=True)
    try:
        stored = store.get_many(e["custom_id"] for e in errors)
    finally:
        store.close()
    assert len(stored) == 5
    for answer, _ in stored.values():
        assert answer.text is None and not answer.permanent
        assert answer.error == "Batch API: Mock batch failure (X-AIMock-Batch-Outcome: failed)"

    again = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert again.returncode == 0, again.stderr
    old, new = batches(aimock)
    assert old["id"] == failed["id"] and new["status"] == "completed"
    check_batch_answers(aimock, new, output(tmp_path))
    assert chat_requests(aimock) == []


def test_expired_requests_wait_for_the_next_run(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    root, hp = proxy
    hp.rules = [Rule("POST", r"/batches$", {"X-AIMock-Batch-Outcome": "expired"})]
    job = make_job(tmp_path, write_job)
    first = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert first.returncode == 3, first.stderr
    assert "5 requests expired" in first.stderr and 'on-expired = "online"' in first.stderr
    assert not (tmp_path / "out.parquet").exists()

    second = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert second.returncode == 0, second.stderr
    old, new = batches(aimock)
    assert (old["status"], new["status"]) == ("expired", "completed")
    assert old.get("output_file_id") is None and old.get("error_file_id") is None  # aimock: no files
    assert len(jsonl(aimock, new["input_file_id"])) == 5
    check_batch_answers(aimock, new, output(tmp_path))
    assert chat_requests(aimock) == []


def test_expired_requests_go_online_and_get_the_fixtures_answers(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    root, hp = proxy
    hp.rules = [Rule("POST", r"/batches$", {"X-AIMock-Batch-Outcome": "expired"})]
    job = make_job(tmp_path, write_job, {"on-expired": "online"})
    proc = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert proc.returncode == 0, proc.stderr
    (batch,) = batches(aimock)
    assert batch["status"] == "expired"
    rows = output(tmp_path)
    assert {r["word"]: (r["text"], r["input_tokens"], r["error"]) for r in rows} == \
        {w: (text, tokens, None) for w, (text, tokens) in ONLINE.items()}
    assert all(r["latency_s"] is not None for r in rows)  # answered online, timed
    sent = [e["body"]["messages"][-1]["content"] for e in chat_requests(aimock)]
    assert sorted(sent) == sorted(prompt(w) for w in WORDS), "each expired request once online"
    report = json.loads((tmp_path / "out.parquet.report.json").read_text(encoding="utf-8"))
    assert (report["requests_sent"], report["batch_requests"]) == (5, 5)


def test_a_completion_window_aimock_refuses_ends_the_run_and_leaves_no_file(
        tmp_path: Path, aimock: Server, write_job: WriteJob, run_batch: RunBatch) -> None:
    base_url = aimock.root + PREFIXES["groq"]
    job = make_job(tmp_path, write_job, {"completion-window": "48h"})  # Groq's range; aimock: 24h only
    first = run_batch(job, "--base-url", base_url)
    assert first.returncode == 4, first.stderr
    assert "'completion_window' must be '24h'" in first.stderr
    assert batches(aimock) == []
    assert files(aimock) == [], "the refused batch's file was left on the server"
    assert calls(journal(aimock))["POST /files"] == 1

    job = make_job(tmp_path, write_job)
    second = run_batch(job, "--base-url", base_url)
    assert second.returncode == 0, second.stderr
    (batch,) = batches(aimock)
    check_batch_answers(aimock, batch, output(tmp_path))
    assert calls(journal(aimock))["POST /files"] == 2


def test_aimock_chaos_on_the_batch_routes_is_retried_without_paying_twice(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    root, hp = proxy
    hp.rules = [
        Rule("POST", r"/files$", {"X-AIMock-Chaos-Drop": "1"}),  # 500 before storing
        Rule("POST", r"/batches$", {"X-AIMock-Chaos-Ratelimit": "1"}),  # 429, Retry-After: 1
        Rule("GET", r"/batches/[^/]+$", {"X-AIMock-Chaos-Disconnect": "1"}),  # connection destroyed
        Rule("GET", r"/content$", {"X-AIMock-Chaos-Drop": "1"}),  # the output download fails once
    ]
    job = make_job(tmp_path, write_job)
    proc = run_batch(job, "--base-url", root + PREFIXES["groq"], "-v")
    assert proc.returncode == 0, proc.stderr
    assert all(rule.times == 0 for rule in hp.rules), "a fault was not injected"
    (batch,) = batches(aimock)
    (upload,) = files(aimock)
    assert upload["id"] == batch["input_file_id"]
    check_batch_answers(aimock, batch, output(tmp_path))
    assert chat_requests(aimock) == []
    entries = journal(aimock)
    # Each fault, then the call that counts; a retried upload or submission first looks on the server
    # for what the failed try may have left (aimock's chaos acts before storing anything).
    assert statuses(entries, "POST /files") == [500, 200]
    assert statuses(entries, "GET /files") == [200]
    assert statuses(entries, "POST /batches") == [429, 200]
    assert statuses(entries, "GET /batches") == [200]
    assert statuses(entries, "GET /files/{id}/content") == [500, 200]
    assert statuses(entries, "GET /batches/{id}")[-2:] == [200, 200]  # after the dropped connection(s)
    assert "chaos_drop" in proc.stderr and "429" in proc.stderr


def test_a_download_that_is_not_jsonl_is_fetched_again_not_merged_as_unanswered(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    """aimock's chaos answers the output download with `200 {malformed json: <<<chaos>>>`. batch used to
    merge that as "completed without a result for 5 requests" (the batch marked done, every request
    left to be submitted and paid for again, exit 3); it downloads again instead."""
    root, hp = proxy
    hp.rules = [Rule("GET", r"/content$", {"X-AIMock-Chaos-Malformed": "1"})]
    job = make_job(tmp_path, write_job)
    proc = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert proc.returncode == 0, proc.stderr
    assert hp.rules[0].times == 0, "the fault was not injected"
    assert "unreadable" in proc.stderr and "downloading it again" in proc.stderr
    (batch,) = batches(aimock)
    check_batch_answers(aimock, batch, output(tmp_path))
    got = calls(journal(aimock))
    assert (got["POST /files"], got["POST /batches"], got["GET /files/{id}/content"]) == (1, 1, 2)
    assert chat_requests(aimock) == []


def test_a_download_that_stays_unreadable_stops_the_run_and_the_next_run_merges_it(
        tmp_path: Path, aimock: Server, proxy: tuple[str, HeaderProxy], write_job: WriteJob,
        run_batch: RunBatch) -> None:
    """Every download garbled: the run stops (exit 3) without marking the batch merged, so its requests
    are not submitted again; the next run downloads it again and merges it."""
    root, hp = proxy
    hp.rules = [Rule("GET", r"/content$", {"X-AIMock-Chaos-Malformed": "1"}, times=3)]
    job = make_job(tmp_path, write_job)
    first = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert first.returncode == 3, first.stderr
    assert "unreadable" in first.stderr and "nothing of its batch was merged" in first.stderr
    assert not (tmp_path / "out.parquet").exists()

    second = run_batch(job, "--base-url", root + PREFIXES["groq"])
    assert second.returncode == 0, second.stderr
    (batch,) = batches(aimock)
    check_batch_answers(aimock, batch, output(tmp_path))
    got = calls(journal(aimock))
    assert (got["POST /files"], got["POST /batches"], got["GET /files/{id}/content"]) == (1, 1, 4)
    assert chat_requests(aimock) == []
