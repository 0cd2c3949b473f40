"""Batch API files: request lines carry the online body byte for byte, files are cut at Groq's limits,
result lines become answers, row errors or nothing (expired); the store records uploads step by step."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from batch.batchapi.endpoints import BatchApi
from batch.batchapi.files import ChunkWriter, request_line
from batch.batchapi.results import check, parts
from batch.records import Request
from batch.send.client import Client
from batch.store.answers import Store
from batch.store.ledger import Ledger


def _request(i: int, size: int = 10) -> Request:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * size + str(i)}]}).encode()
    return Request(fingerprint=f"{i:032x}", body=body, est_tokens=1, row=i)


def test_a_request_line_wraps_the_exact_online_body() -> None:
    r = _request(7)
    line = json.loads(request_line(r))
    assert line == {"custom_id": r.fingerprint, "method": "POST", "url": "/v1/chat/completions",
                    "body": json.loads(r.body)}
    assert request_line(r).endswith(r.body + b"}\n")  # the bytes themselves, not a re-serialisation


def test_files_are_cut_at_the_line_and_byte_limits(tmp_path: Path) -> None:
    writer = ChunkWriter(tmp_path, max_lines=3)
    chunks = [c for c in (writer.add(_request(i)) for i in range(7)) if c]
    last = writer.finish()
    assert last is not None
    chunks.append(last)
    assert [len(c.fingerprints) for c in chunks] == [3, 3, 1]
    for c in chunks:
        lines = c.path.read_bytes().splitlines()
        assert [json.loads(x)["custom_id"] for x in lines] == c.fingerprints
        assert c.size == c.path.stat().st_size

    one = len(request_line(_request(0, size=100)))
    writer = ChunkWriter(tmp_path / "b", max_bytes=2 * one)
    sizes = [c for c in (writer.add(_request(i, size=100)) for i in range(5)) if c]
    assert [len(c.fingerprints) for c in sizes] == [2, 2]
    assert all(c.size <= 2 * one for c in sizes)
    writer.discard()  # the fifth request's file, still open


def test_result_lines_become_answers_errors_or_nothing(tmp_path: Path) -> None:
    completion = {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    lines = [
        {"id": "r1", "custom_id": "a", "response": {"status_code": 200, "request_id": "req_1",
                                                    "body": completion}, "error": None},
        {"id": "r2", "custom_id": "b", "response": {"status_code": 400, "request_id": "req_2", "body": {
            "error": {"message": "bad thing", "type": "invalid_request_error"}}}, "error": None},
        {"id": "r3", "custom_id": "c", "response": {"status_code": 500, "request_id": "req_3", "body": {
            "error": {"message": "Internal Server Error", "type": "internal_server_error"}}}, "error": None},
        {"id": "r4", "custom_id": "d", "response": None, "error": {
            "code": "batch_expired", "message": "This request could not be executed before the window."}},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n", encoding="utf-8")
    checked = check(path, lines=3)
    assert checked.unreadable == 1
    read = list(parts(path, checked))  # the unreadable line is skipped
    assert [len(p.answers) + len(p.unanswered) for p in read] == [3, 1]
    by_fp = {a.fingerprint: a for p in read for a in p.answers}
    assert len(by_fp) == 3
    assert by_fp["a"].ok and by_fp["a"].text == "hello" and by_fp["a"].input_tokens == 5
    assert by_fp["a"].request_id == "req_1" and by_fp["a"].attempts == 1
    assert by_fp["b"].error is not None and "bad thing" in by_fp["b"].error and by_fp["b"].permanent
    assert by_fp["c"].error is not None and "500" in by_fp["c"].error and not by_fp["c"].permanent
    assert [fp for p in read for fp in p.unanswered] == ["d"]


def test_only_lines_that_are_json_objects_with_a_string_custom_id_are_readable(tmp_path: Path) -> None:
    good = json.dumps({"custom_id": "a", "response": None, "error": {"code": "batch_expired"}})
    bad = ["<html>502 Bad Gateway</html>", good[:-7], json.dumps({"id": "x"}), json.dumps([good]),
           json.dumps({"custom_id": 7}), json.dumps("custom_id"), "\udcc3("]  # the last: not UTF-8
    path = tmp_path / "results.jsonl"
    path.write_bytes("\n".join([good, *bad, "", "  ", good]).encode("utf-8", "surrogateescape") + b"\n")
    checked = check(path)
    assert checked.unreadable == len(bad)  # blank lines are not counted
    assert [fp for p in parts(path, checked) for fp in p.unanswered] == ["a", "a"]


def test_the_store_records_each_step_and_hides_held_requests(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    ledger = Ledger(store)
    upload = ledger.add("batch-x", "abc", ["a", "b", "c"], 123).id
    assert ledger.add("batch-x", "abc", ["d"], 9).name == f"batch-x-{upload + 1}-abc.jsonl"
    assert ledger.held(["a", "c", "z"]) == {"a", "c"}
    ledger.update(upload, file_id="file_1", status="uploaded")
    store.close()

    store = Store(tmp_path / "s.sqlite")  # as a re-run sees it
    ledger = Ledger(store)
    u = ledger.uploads(open_only=True)[0]
    assert (u.name, u.lines, u.bytes, u.file_id, u.batch_id, u.status) == (
        f"batch-x-{upload}-abc.jsonl", 3, 123, "file_1", None, "uploaded")
    assert ledger.lines(upload) == {1: "a", 2: "b", 3: "c"}
    ledger.update(upload, batch_id="batch_1", status="completed", done=1)
    assert [u.lines for u in ledger.uploads(open_only=True)] == [1] and ledger.held(["a"]) == set()
    assert store.meta("prefix", "x1") == "x1" and store.meta("prefix", "x2") == "x1"
    store.close()


def test_lists_are_followed_page_by_page_on_an_openai_style_server() -> None:
    """Groq lists everything at once; OpenAI pages with has_more and ?after=: recovery must see it all."""
    batches = [{"id": f"batch_{i:03d}", "input_file_id": f"file_{i}"} for i in range(45)]
    seen_after: list[str | None] = []

    async def list_batches(request: web.Request) -> web.Response:
        after = request.query.get("after")
        seen_after.append(after)
        start = 0 if after is None else next(i for i, b in enumerate(batches) if b["id"] == after) + 1
        page = batches[start:start + 20]
        return web.json_response({"object": "list", "data": page, "has_more": start + 20 < len(batches),
                                  "last_id": page[-1]["id"] if page else None})

    async def scenario() -> list[dict[str, Any]]:
        app = web.Application()
        app.router.add_get("/v1/batches", list_batches)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            async with Client(url, None, timeout_s=10, connections=1) as client:
                return await BatchApi(client).list_batches()
        finally:
            await runner.cleanup()

    got = asyncio.run(scenario())
    assert [b["id"] for b in got] == [b["id"] for b in batches]
    assert seen_after == [None, "batch_019", "batch_039"]


def test_parts_come_in_key_order_and_a_repeated_id_keeps_its_file_order(tmp_path: Path) -> None:
    """Each part is a stretch of the store's key (ids by their first two characters), so merging it
    rewrites few pages; lines with the same id stay in file order, so the last one is stored."""
    ids = [f"{(i * 37) % 256:02x}{i:030x}" for i in range(40)]  # all over the key space
    lines = [{"custom_id": fp, "response": None, "error": {"message": f"line {n}"}}
             for n, fp in enumerate([*ids, ids[5]])]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    read = list(parts(path, check(path, lines=7)))
    assert [len(p.answers) for p in read] == [7, 7, 7, 7, 7, 6]
    got = [a.fingerprint for p in read for a in p.answers]
    assert got == sorted(got) and sorted(set(got)) == sorted(ids)
    repeated = [a.error for p in read for a in p.answers if a.fingerprint == ids[5]]
    assert repeated == ["Batch API: line 5", "Batch API: line 40"]
