"""The simulator's Batch API (batch/sim/batches.py), checked with Groq's own SDK as the reference client.

Files and batches go through the official `groq` SDK, so whatever it parses here it parses from Groq.
Schedules are shortened (validate and finalize in tens of milliseconds, fast lines, a high time scale)
so each lifecycle takes well under two seconds of real time; a test that looks at a batch midway holds
the simulator's clock (`HeldClock`) and moves it on by hand, so what it sees does not depend on load.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from typing import Any

import groq
import pytest
from conftest import HANG_GUARD_S, wait_until
from fakeclock import HeldClock
from groq.types.batch_retrieve_response import BatchRetrieveResponse

from batch.sim import SimConfig, Simulator, add_cli_arguments, config_from_args, sim_answer
from batch.sim import batches as simbatch

MODEL = "openai/gpt-oss-20b"
# aiohttp's own multipart reader calls its deprecated unread_data() when a read comes back short.
pytestmark = pytest.mark.filterwarnings("ignore:unread_data:DeprecationWarning")
FAST: dict[str, Any] = {"batch_validate_s": 0.05, "batch_finalize_s": 0.05, "batch_lines_per_s": 5000.0}
Start = Callable[..., tuple[str, Simulator]]


@pytest.fixture
def connect() -> Iterator[Callable[..., groq.Groq]]:
    """SDK clients for a simulator's base URL, closed at teardown."""
    clients: list[groq.Groq] = []

    def connect(base_url: str, api_key: str = "gsk_test") -> groq.Groq:
        # The SDK appends /openai/v1 itself, so it gets the bare host.
        client = groq.Groq(api_key=api_key, base_url=base_url.removesuffix("/openai/v1"), max_retries=0,
                           timeout=HANG_GUARD_S)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def body(prompt: str, **params: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": prompt}], **params}


def line(custom_id: str, request: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request,
            **overrides}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


def rows(n: int) -> list[dict[str, Any]]:
    """n lines with varied bodies: plain, capped (cut short), JSON schema, non-ASCII."""
    out = []
    for i in range(n):
        params: dict[str, Any] = {}
        if i % 4 == 1:
            params["max_completion_tokens"] = 6
        elif i % 4 == 2:
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "r", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}
        out.append(line(f"row-{i}", body(f"Rewrite row {i} " + "é" * (i % 3) + "x" * (i * 3), **params)))
    return out


def upload(client: groq.Groq, lines: list[dict[str, Any]] | bytes) -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    made = client.files.create(file=("rows.jsonl", data), purpose="batch")
    assert made.id is not None
    return made.id


def submit(client: groq.Groq, lines: list[dict[str, Any]] | bytes, window: str = "24h") -> str:
    return client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                 completion_window=window).id


def wait_for(client: groq.Groq, batch_id: str, *statuses: str) -> BatchRetrieveResponse:
    """Poll until the batch's status is one of `statuses`; return it (the SDK's model)."""
    seen: list[BatchRetrieveResponse] = []

    def reached() -> bool:
        seen.append(client.batches.retrieve(batch_id))
        return seen[-1].status in statuses

    wait_until(reached, f"batch {batch_id} to be {' or '.join(statuses)}")
    return seen[-1]


def content(client: groq.Groq, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).read().decode().splitlines()]


def test_round_trip_answers_every_line_like_the_online_route(start_sim: Start,
                                                              connect: Callable[..., groq.Groq]) -> None:
    url, sim = start_sim(**FAST, rpd=1000)
    client = connect(url)
    lines = rows(60)
    file = client.files.create(file=("rows.jsonl", jsonl(lines)), purpose="batch")
    assert file.id is not None and file.id.startswith("file_") and len(file.id) == 31
    assert (file.object, file.purpose, file.filename, file.bytes) == ("file", "batch", "rows.jsonl",
                                                                      len(jsonl(lines)))
    created = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"job": "t1"})
    assert created.id.startswith("batch_") and created.object == "batch"
    assert created.status == "validating" and created.metadata == {"job": "t1"}
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.expires_at is not None and 23 <= created.expires_at - created.created_at <= 25
    done = wait_for(client, created.id, "completed", "failed", "expired")
    assert done.status == "completed" and done.errors is None and done.error_file_id is None
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (60, 60, 0)
    stamps = [s for s in (done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at)
              if s is not None]
    assert len(stamps) == 4 and stamps == sorted(stamps)
    assert done.failed_at is done.expired_at is done.cancelled_at is None

    # Batch lines cost the online budgets nothing: the day's first online request sees 999 left.
    raw = client.chat.completions.with_raw_response.create(**body("online"))
    assert raw.headers["x-ratelimit-remaining-requests"] == "999"

    output = content(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(x["custom_id"] for x in lines)
    assert [o["custom_id"] for o in output] != [x["custom_id"] for x in lines]  # any order, not input order
    by_id = {x["custom_id"]: x["body"] for x in lines}
    for out in output:
        assert out["id"].startswith("batch_req_") and out["error"] is None
        response = out["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        answer = response["body"]
        assert answer["x_groq"]["id"] == response["request_id"] and answer["object"] == "chat.completion"
        online = client.chat.completions.create(**by_id[out["custom_id"]])
        assert answer["choices"][0]["message"]["content"] == online.choices[0].message.content
        assert answer["choices"][0]["finish_reason"] == online.choices[0].finish_reason
        assert online.usage is not None
        assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (
            online.usage.prompt_tokens, online.usage.completion_tokens)
        assert set(answer) == set(online.model_dump(exclude_unset=True))
    assert {o["response"]["body"]["choices"][0]["finish_reason"] for o in output} == {"stop", "length"}
    plain = next(o for o in output if o["custom_id"] == "row-0")
    assert plain["response"]["body"]["choices"][0]["message"]["content"] == sim_answer(by_id["row-0"])

    assert done.output_file_id is not None
    out_file = client.files.info(done.output_file_id)
    assert (out_file.purpose, out_file.filename) == ("batch_output", f"{done.id}_output.jsonl")
    assert {f.id for f in client.files.list().data} == {file.id, done.output_file_id}
    listed = client.batches.list()
    assert listed.object == "list" and [b.id for b in listed.data] == [done.id]
    assert client.files.delete(file.id).model_dump() == {"id": file.id, "object": "file", "deleted": True}
    with pytest.raises(groq.NotFoundError):
        client.files.info(file.id)
    assert client.batches.retrieve(done.id).status == "completed"  # the batch outlives its input file

    assert (sim.uploads, sim.batches_created) == (1, 1)
    assert set(sim.files) == {done.output_file_id} and sim.batches[done.id].status == "completed"
    assert len(sim.log) == 61 and all(e.status == 200 for e in sim.log)  # the online requests only


def test_list_is_newest_first_and_content_is_raw_bytes(start_sim: Start,
                                                       connect: Callable[..., groq.Groq]) -> None:
    url, _ = start_sim(**FAST)
    client = connect(url)
    data = jsonl(rows(2)).replace(b"\n", b"\r\n")  # CRLF lines are fine, and come back untouched
    file_id = upload(client, data)
    raw = client.files.with_raw_response.content(file_id)
    assert raw.read() == data and raw.headers["content-type"] == "application/octet-stream"
    first = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="36h")
    second = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                   completion_window="7d")
    assert [b.id for b in client.batches.list().data] == [second.id, first.id]
    for window, batch_id in (("36h", first.id), ("7d", second.id)):
        done = wait_for(client, batch_id, "completed")
        assert done.completion_window == window


def test_expiry_keeps_the_answered_lines_and_expires_the_rest(start_sim: Start,
                                                             connect: Callable[..., groq.Groq]) -> None:
    # "24h" lasts 0.6 s; 60 lines at 40 a second need 1.5 s: the window closes on line 22 (0.05 s validating).
    clock = HeldClock(held=True)
    url, _ = start_sim(clock=clock, **{**FAST, "batch_lines_per_s": 40.0, "batch_time_scale": 86400 / 0.6})
    client = connect(url)
    lines = rows(60)
    batch_id = submit(client, lines)
    seen: list[int] = []
    for _ in range(5):  # 0.1 s of simulator time a step: 4 lines answered a step
        clock.advance(0.1)
        progress = client.batches.retrieve(batch_id)
        assert progress.status == "in_progress" and progress.request_counts is not None
        seen.append(progress.request_counts.completed)
    assert seen == sorted(seen) and seen[0] < seen[-1] < 60  # answers arrive over time
    clock.advance(0.2)  # past the window's end
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    counts = batch.request_counts
    assert counts is not None and counts.total == 60 and 21 <= counts.completed <= 22
    assert counts.failed == 60 - counts.completed
    output, errors = content(client, batch.output_file_id), content(client, batch.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert {x["custom_id"] for x in output + errors} == {x["custom_id"] for x in lines}
    assert all(o["response"]["status_code"] == 200 for o in output)
    for error in errors:
        assert error["id"].startswith("batch_req_") and error["response"] is None
        assert error["error"] == {"code": "batch_expired", "message": "This request could not be executed "
                                  "before the completion window expired."}
    assert client.files.info(str(batch.error_file_id)).purpose == "batch_output"


def test_a_bad_line_fails_the_batch_naming_its_line(start_sim: Start,
                                                    connect: Callable[..., groq.Groq]) -> None:
    url, sim = start_sim(**FAST)
    client = connect(url)
    good = rows(1)[0]
    data = jsonl([
        good,
        line("b", body("x", top_k=5)),
        line("c", body("x")),
        line("c", body("x")),
        line("d", body("x"), url="/v1/completions"),
    ]) + b"{not json\n" + jsonl([
        line("e", {**body("x"), "model": "llama-3.3-70b-versatile"}),
        line("f", {**body("x"), "model": "llama-9-imaginary"}),
        line("g", body("x"), method="GET"),
        line("", body("x")),
        line("h", body("x", temperature=3)),
    ])
    batch = wait_for(client, submit(client, data), "failed", "completed")
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (11, 0, 0)
    assert batch.errors is not None and batch.errors.object == "list" and batch.errors.data is not None
    found = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert found == [
        (2, "invalid_request", "body"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_value", "url"),
        (6, "invalid_json", None),
        (7, "model_decommissioned", "body"),
        (8, "model_not_found", "body"),
        (9, "invalid_value", "method"),
        (10, "invalid_value", "custom_id"),
        (11, "invalid_value", "body.temperature"),
    ]
    messages = {e.line: e.message or "" for e in batch.errors.data}
    assert messages[2] == "property 'top_k' is unsupported"
    assert "line 3" in messages[4] and "llama-9-imaginary" in messages[8]
    assert sim.batches[batch.id].answered == 0


def test_batch_models_reports_every_line_of_another_model(start_sim: Start,
                                                          connect: Callable[..., groq.Groq]) -> None:
    url, _ = start_sim(**FAST, batch_models=("openai/gpt-oss-120b",))
    client = connect(url)
    batch = wait_for(client, submit(client, rows(5)), "failed", "completed")
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (n, "model_not_available_for_batch", "body.model") for n in range(1, 6)]
    assert all(f"`{MODEL}`" in (e.message or "") for e in batch.errors.data)


def test_empty_and_oversized_files_fail(start_sim: Start, connect: Callable[..., groq.Groq],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = start_sim(**FAST)
    client = connect(url)
    empty = wait_for(client, submit(client, b""), "failed", "completed")
    assert empty.errors is not None and empty.errors.data is not None
    assert [(e.code, e.line) for e in empty.errors.data] == [("empty_file", None)]
    monkeypatch.setattr(simbatch, "LINE_LIMIT", 3)
    many = wait_for(client, submit(client, rows(4)), "failed", "completed")
    assert many.errors is not None and many.errors.data is not None
    assert [(e.code, e.line) for e in many.errors.data] == [("batch_too_large", None)]
    assert many.request_counts is not None and many.request_counts.total == 4
    monkeypatch.setattr(simbatch, "MAX_FILE_BYTES", 1000)
    with pytest.raises(groq.BadRequestError) as info:
        upload(client, b"x" * 1001)
    assert isinstance(info.value.body, dict)
    error = info.value.body["error"]
    assert (error["code"], error["param"]) == ("file_too_large", "file") and "100 MB" in error["message"]
    upload(client, b"x" * 1000)


def test_fault_rate_puts_500s_in_the_error_file(start_sim: Start, connect: Callable[..., groq.Groq]) -> None:
    url, _ = start_sim(**FAST, batch_fault_rate=0.3, seed=7)
    client = connect(url)
    batch = wait_for(client, submit(client, rows(40)), "completed", "failed")
    counts = batch.request_counts
    assert counts is not None and counts.total == 40 and 0 < counts.failed < 40
    assert counts.completed + counts.failed == 40
    output, errors = content(client, batch.output_file_id), content(client, batch.error_file_id)
    assert (len(output), len(errors)) == (counts.completed, counts.failed)
    for error in errors:
        assert error["error"] is None and error["response"]["status_code"] == 500
        assert error["response"]["request_id"].startswith("req_")
        assert error["response"]["body"] == {"error": {"message": "Internal Server Error",
                                                       "type": "internal_server_error"}}
    assert len({x["custom_id"] for x in output + errors}) == 40


def test_cancel_keeps_what_was_answered(start_sim: Start, connect: Callable[..., groq.Groq]) -> None:
    clock = HeldClock(held=True)
    url, _ = start_sim(clock=clock, **{**FAST, "batch_lines_per_s": 50.0, "batch_finalize_s": 0.3})
    client = connect(url)
    batch_id = submit(client, rows(100))
    clock.advance(0.55)  # 0.05 s validating, then 0.5 s at 50 lines a second: about 25 answered
    running = client.batches.retrieve(batch_id)
    assert running.status == "in_progress" and running.request_counts is not None
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelling.request_counts is not None
    answered = cancelling.request_counts.completed
    assert answered == running.request_counts.completed and 20 <= answered <= 25
    clock.advance(0.2)  # still finalizing the cancel
    assert client.batches.cancel(batch_id).status == "cancelling"  # a second cancel changes nothing
    clock.release()
    cancelled = wait_for(client, batch_id, "cancelled")
    assert cancelled.cancelled_at is not None and cancelled.request_counts is not None
    assert cancelled.request_counts.completed == answered and cancelled.request_counts.failed == 0
    assert len(content(client, cancelled.output_file_id)) == answered
    assert cancelled.error_file_id is None  # unanswered lines are in no file

    early = client.batches.cancel(submit(client, rows(3)))  # still validating: nothing is ever answered
    assert early.status == "cancelling"
    gone = wait_for(client, early.id, "cancelled")
    assert gone.output_file_id is None and gone.error_file_id is None and gone.in_progress_at is None
    assert gone.request_counts is not None and gone.request_counts.total == 0


def test_a_finished_batch_cannot_be_cancelled(start_sim: Start, connect: Callable[..., groq.Groq]) -> None:
    url, _ = start_sim(**FAST)
    client = connect(url)
    batch_id = submit(client, rows(2))
    wait_for(client, batch_id, "completed")
    with pytest.raises(groq.BadRequestError) as info:
        client.batches.cancel(batch_id)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"] == {"message": "Cannot cancel a batch with status 'completed'.",
                                        "type": "invalid_request_error", "code": "batch_not_cancellable"}


@pytest.mark.parametrize("window", ["12h", "23h", "8d", "169h", "1w", "24", "", "24H", "2.5d"])
def test_bad_completion_window(simulator: tuple[str, Simulator], connect: Callable[..., groq.Groq],
                               window: str) -> None:
    client = connect(simulator[0])
    file_id = upload(client, rows(1))
    with pytest.raises(groq.BadRequestError) as info:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window=window)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["param"] == "completion_window"
    assert "completion_window" in info.value.body["error"]["message"]


def test_windows_from_24h_to_7d() -> None:
    assert [simbatch.window_seconds(w) for w in ("24h", "36h", "2d", "7d", "168h")] == [
        86400, 129600, 172800, 604800, 604800]


def test_request_errors(simulator: tuple[str, Simulator], connect: Callable[..., groq.Groq]) -> None:
    url, sim = simulator
    client = connect(url)
    with pytest.raises(groq.BadRequestError) as bad_purpose:
        # a purpose and (below) an endpoint the SDK's types forbid, for the server to refuse
        client.files.create(file=("rows.jsonl", jsonl(rows(1))), purpose="assistants")  # type: ignore[arg-type]
    assert isinstance(bad_purpose.value.body, dict) and bad_purpose.value.body["error"]["param"] == "purpose"
    assert sim.uploads == 0
    for call in (lambda: client.files.info("file_nope"), lambda: client.files.content("file_nope"),
                 lambda: client.files.delete("file_nope"), lambda: client.batches.retrieve("batch_nope"),
                 lambda: client.batches.cancel("batch_nope"),
                 lambda: client.batches.create(input_file_id="file_nope", endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(groq.NotFoundError) as info:
            call()
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["code"] == "not_found"
        assert info.value.body["error"]["type"] == "invalid_request_error"
        assert "_nope` not found" in info.value.body["error"]["message"]
    file_id = upload(client, rows(1))
    with pytest.raises(groq.BadRequestError) as endpoint:
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",  # type: ignore[arg-type]
                              completion_window="24h")
    assert isinstance(endpoint.value.body, dict) and endpoint.value.body["error"]["param"] == "endpoint"
    with pytest.raises(groq.BadRequestError) as extra:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_body={"priority": 1})
    assert isinstance(extra.value.body, dict)
    assert extra.value.body["error"]["message"] == "property 'priority' is unsupported"
    client.files.delete(file_id)
    with pytest.raises(groq.NotFoundError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert sim.batches_created == 0 and sim.log == []


def test_an_output_file_is_no_input(start_sim: Start, connect: Callable[..., groq.Groq]) -> None:
    url, _ = start_sim(**FAST)
    client = connect(url)
    done = wait_for(client, submit(client, rows(1)), "completed")
    assert done.output_file_id is not None
    with pytest.raises(groq.BadRequestError) as info:
        client.batches.create(input_file_id=done.output_file_id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert isinstance(info.value.body, dict) and info.value.body["error"]["param"] == "input_file_id"


def test_bad_key_is_the_chat_routes_401(start_sim: Start, connect: Callable[..., groq.Groq]) -> None:
    url, sim = start_sim(api_key="gsk_right", **FAST)
    wrong = connect(url, "gsk_wrong")
    calls: list[Callable[[], object]] = [
        lambda: wrong.files.create(file=("rows.jsonl", b"{}\n"), purpose="batch"),
        wrong.files.list, lambda: wrong.files.content("file_x"), wrong.batches.list,
        lambda: wrong.batches.create(input_file_id="file_x", endpoint="/v1/chat/completions",
                                     completion_window="24h"),
        lambda: wrong.batches.cancel("batch_x"),
    ]
    for call in calls:
        with pytest.raises(groq.AuthenticationError) as info:
            call()
        assert info.value.body == {"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                             "code": "invalid_api_key"}}
    assert sim.uploads == 0
    assert connect(url, "gsk_right").files.list().data == []


def test_config_and_cli() -> None:
    d = SimConfig()
    assert (d.batch_validate_s, d.batch_models, d.batch_lines_per_s, d.batch_time_scale, d.batch_finalize_s,
            d.batch_fault_rate) == (0.2, None, 500.0, 3600.0, 0.2, 0.0)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--batch-validate-s", "0", "--batch-lines-per-s", "20", "--batch-time-scale", "86400",
        "--batch-finalize-s", "1.5", "--batch-fault-rate", "0.25",
        "--batch-models", f"{MODEL}, qwen/qwen3.8-27b",
    ]))
    assert (config.batch_validate_s, config.batch_lines_per_s, config.batch_time_scale,
            config.batch_finalize_s, config.batch_fault_rate, config.batch_models) == (
        0.0, 20.0, 86400.0, 1.5, 0.25, (MODEL, "qwen/qwen3.8-27b"))
    assert config_from_args(parser.parse_args([])).batch_models is None
    for bad, match in (({"batch_lines_per_s": 0}, "batch_lines_per_s"), ({"batch_time_scale": -1}, "scale"),
                       ({"batch_validate_s": float("nan")}, "batch_validate_s"),
                       ({"batch_fault_rate": 1.5}, "batch_fault_rate"),
                       ({"batch_models": ("llama-9",)}, "unknown batch models")):
        with pytest.raises(ValueError, match=match):
            SimConfig(**bad)
