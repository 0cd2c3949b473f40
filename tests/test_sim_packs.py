"""The simulator's packs: several rows in one chat request, answered item by item (batch/sim/packs.py).

Every request goes over a real loopback socket: plain JSON through httpx, so the body on the wire is
exactly the one written here, and once through the official `groq` SDK. The expected answers are
computed from the single-request answers (`sim_answer`, `sim_json_answer`) the simulator gave before
packs existed, so these tests hold a pack's items to what each row would get alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from typing import Any

import groq
import httpx
import pytest
from conftest import HANG_GUARD_S, wait_until

from batch.sim import (
    SimConfig,
    Simulator,
    add_cli_arguments,
    config_from_args,
    count_prompt_tokens,
    count_tokens,
    read_pack,
    sim_answer,
    sim_json_answer,
)

MODEL = "openai/gpt-oss-20b"
Start = Callable[..., tuple[str, Simulator]]
# aiohttp's own multipart reader calls its deprecated unread_data() when a read comes back short.
pytestmark = pytest.mark.filterwarnings("ignore:unread_data:DeprecationWarning")

INSTRUCTION = "Answer each item's prompt.\nGive back every id, once.\n"
# Hostile prompts: quotes, backslashes, CR/LF and a lone CR, template text, a line separator that JSON
# leaves unescaped, right-to-left text with an override, emoji with a ZWJ, a 10 KB value, the empty string.
HOSTILE: list[tuple[str, str]] = [
    ('row "0"', 'She said "hi" and \\ \'bye\',\r\nthen\rleft\n'),
    ("row\r\n1", "${x} and $x and {{y}} and {0}\u2028after a line separator"),
    ("\u0645\u0641\u062a\u0627\u062d-2",
     "\u0645\u062d\u0645\u062f \u202e RTL \U0001f468\u200d\U0001f469 \U0001f389"),
    ("3", "\u00e9" + "ab" * 5120),
    ("", ""),
]
OBJECT_ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "words": {"type": "integer"}, "score": {"type": "number"},
                   "short": {"type": "boolean"}, "tags": {"type": ["array", "null"]}},
    "required": ["title", "words", "score", "short", "tags"], "additionalProperties": False,
}


def pack_schema(item: dict[str, Any]) -> dict[str, Any]:
    """PACK around one answer's schema (ITEM)."""
    row = {"type": "object", "properties": {"id": {"type": "string"}, "answer": item},
           "required": ["id", "answer"], "additionalProperties": False}
    return {"type": "object", "properties": {"answers": {"type": "array", "items": row}},
            "required": ["answers"], "additionalProperties": False}


def response_format(item: dict[str, Any], spelling: str = "json_schema") -> dict[str, Any]:
    if spelling == "json_object":  # llama.cpp's
        return {"type": "json_object", "schema": pack_schema(item)}
    spec = {"name": "rows", "strict": True, "schema": pack_schema(item)}
    return {"type": "json_schema", "json_schema": spec}


def packed(items: list[tuple[str, str]], item: dict[str, Any] | None = None, spelling: str = "json_schema",
           **params: Any) -> dict[str, Any]:
    array = json.dumps([{"id": i, "prompt": p} for i, p in items], ensure_ascii=False)
    assert "\n" not in array
    return {"model": MODEL, "messages": [{"role": "system", "content": "You are brief."},
                                         {"role": "user", "content": INSTRUCTION + array}],
            "response_format": response_format(item or {"type": "string"}, spelling), **params}


def alone(prompt: str, **params: Any) -> dict[str, Any]:
    """The single request of one row."""
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **params}


def echo(prompt: str) -> str:
    """A row's answer to a text job, alone."""
    return sim_answer(alone(prompt))


def as_object(prompt: str, schema: dict[str, Any] = OBJECT_ITEM) -> Any:
    """A row's answer to a structured job, alone: the object of its JSON text."""
    single = {"type": "json_schema", "json_schema": {"name": "row", "schema": schema}}
    return json.loads(sim_json_answer(alone(prompt, response_format=single)))


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=HANG_GUARD_S,
                          headers={"Authorization": "Bearer gsk_test"})
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def content(out: dict[str, Any]) -> str:
    text: str = out["choices"][0]["message"]["content"]
    return text


@pytest.mark.parametrize("spelling", ["json_schema", "json_object"])
def test_a_pack_is_answered_item_by_item(start_sim: Start, spelling: str) -> None:
    url, _ = start_sim()
    body = packed(HOSTILE, spelling=spelling)
    out = post(url, body)
    text = content(out)
    answers = json.loads(text)["answers"]
    assert [a["id"] for a in answers] == [i for i, _ in HOSTILE]
    assert [a["answer"] for a in answers] == [echo(p) for _, p in HOSTILE]
    assert answers[3]["answer"] == f"[{MODEL}] " + HOSTILE[3][1] and answers[4]["answer"] == f"[{MODEL}] "
    assert out["choices"][0]["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(body["messages"])
    assert usage["completion_tokens"] == count_tokens(text)


def test_an_object_item_is_answered_with_nested_objects(start_sim: Start) -> None:
    url, _ = start_sim()
    items = [("a", "hello"), ("b", "h\u00e9llo there\r\n"), ("c", "")]
    answers = json.loads(content(post(url, packed(items, OBJECT_ITEM))))["answers"]
    assert answers == [{"id": i, "answer": as_object(p)} for i, p in items]
    assert answers[0]["answer"] == {"title": "hello", "words": 5, "score": 1.25, "short": False, "tags": []}

    # A bare object ITEM gets what a bare JSON request gets: the model and the prompt.
    bare = packed(items, {"type": "object"}, spelling="json_object")
    answers = json.loads(content(post(url, bare)))["answers"]
    plain = {"type": "json_object"}
    assert answers == [{"id": i, "answer": json.loads(sim_json_answer(alone(p, response_format=plain)))}
                       for i, p in items]
    assert answers[0]["answer"] == {"model": MODEL, "prompt": "hello"}


def test_a_cap_cuts_the_whole_pack(start_sim: Start) -> None:
    url, _ = start_sim()
    items = [(str(i), f"Rewrite row {i} at some length, please.") for i in range(4)]
    whole = content(post(url, packed(items)))
    out = post(url, packed(items, max_completion_tokens=12))
    text = content(out)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 12 and text == whole.encode()[:48].decode()
    with pytest.raises(ValueError):
        json.loads(text)
    # max_tokens is the same cap.
    assert content(post(url, packed(items, max_tokens=12))) == text


def observed(items: list[tuple[str, str]], text: str) -> set[str]:
    """The pack faults seen in an answer; every item answered under its own id has its own answer."""
    right = {i: echo(p) for i, p in items}
    seen: set[str] = set()
    given: dict[str, list[str]] = {}
    renamed = 0
    for a in json.loads(text)["answers"]:
        if a["id"] not in right:
            seen.add("rename")
            renamed += 1
            continue
        given.setdefault(a["id"], []).append(a["answer"])
    for id_, answers in given.items():
        assert answers.count(right[id_]) == 1, (id_, answers)  # its right answer once, wherever it is
        if len(answers) == 2:
            seen.add("repeat")
    if len(set(right) - set(given)) > renamed:  # an item is missing when it is lost or renamed
        seen.add("lose")
    return seen


def test_pack_faults_lose_repeat_and_rename_items_reproducibly(start_sim: Start) -> None:
    items = [(f"r{i}", f"prompt {i}") for i in range(10)]
    url, _ = start_sim(seed=7, pack_fault_rate=0.3)
    texts = [content(post(url, packed(items))) for _ in range(6)]
    seen = set().union(*(observed(items, t) for t in texts))
    assert seen == {"lose", "repeat", "rename"}
    lengths = {len(json.loads(t)["answers"]) for t in texts}
    assert any(n < len(items) for n in lengths) and any(n > len(items) for n in lengths)

    again, _ = start_sim(seed=7, pack_fault_rate=0.3)
    assert [content(post(again, packed(items))) for _ in range(6)] == texts
    other, _ = start_sim(seed=8, pack_fault_rate=0.3)
    assert [content(post(other, packed(items))) for _ in range(6)] != texts

    # One kind only; and a renamed id is in no item, even one named like a rename.
    lose_only, _ = start_sim(seed=7, pack_fault_rate=0.5, pack_faults=("lose",))
    assert observed(items, content(post(lose_only, packed(items)))) == {"lose"}
    named = [("a", "x"), ("a-x", "y")]
    renamed, _ = start_sim(pack_fault_rate=1.0, pack_faults=("rename",))
    ids = [a["id"] for a in json.loads(content(post(renamed, packed(named))))["answers"]]
    assert len(ids) == 2 and not set(ids) & {"a", "a-x"}

    # A repeated object item's second answer is wrong too, even when every item's answer is the same.
    same = [("a", "p"), ("b", "p")]
    repeated, _ = start_sim(pack_fault_rate=1.0, pack_faults=("repeat",))
    answers = json.loads(content(post(repeated, packed(same, OBJECT_ITEM))))["answers"]
    assert [a["id"] for a in answers] == ["a", "a", "b", "b"]
    # a's right answer first, b's wrong one first (odd items put the wrong copy before the right one).
    assert answers[0]["answer"] == answers[3]["answer"] != answers[1]["answer"]
    assert answers[2]["answer"] != answers[3]["answer"]


def test_pack_fault_knobs_and_flags() -> None:
    assert (SimConfig().pack_fault_rate, SimConfig().pack_faults) == (0.0, ("lose", "repeat", "rename"))
    for bad in ({"pack_fault_rate": 1.5}, {"pack_fault_rate": float("nan")}, {"pack_faults": ("eat",)}):
        with pytest.raises(ValueError, match="pack_fault"):
            SimConfig(**bad)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--pack-fault-rate", "0.25", "--pack-faults", "lose, rename"])
    config = config_from_args(args)
    assert (config.pack_fault_rate, config.pack_faults) == (0.25, ("lose", "rename"))
    with pytest.raises(ValueError, match=r"^--pack-faults has unknown"):
        config_from_args(parser.parse_args(["--pack-faults", "lose,eat"]))
    with pytest.raises(ValueError, match=r"^--pack-fault-rate must be"):
        config_from_args(parser.parse_args(["--pack-fault-rate", "-1"]))


def test_a_request_that_is_no_pack_is_answered_as_before(start_sim: Start) -> None:
    url, _ = start_sim(pack_fault_rate=1.0)  # no pack, no pack fault
    items = [("a", "one"), ("b", "two")]
    pack = packed(items)
    assert read_pack(pack) is not None
    assert json.loads(content(post(url, pack)))["answers"] != [{"id": i, "answer": echo(p)} for i, p in items]

    def variant(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(pack))  # a deep copy
        change(body)
        return body

    def schema(body: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = body["response_format"]["json_schema"]["schema"]
        return found

    def last(body: dict[str, Any], text: str) -> None:
        body["messages"][-1]["content"] = text

    near_misses = [
        # another top-level property beside `answers`
        variant(lambda b: schema(b)["properties"].update(n={"type": "integer"})),
        # items without an `id`
        variant(lambda b: schema(b)["properties"]["answers"]["items"]["properties"].pop("id")),
        # the array is not the last line
        variant(lambda b: last(b, b["messages"][-1]["content"] + "\nThanks.")),
        # an item with another key
        variant(lambda b: last(b, INSTRUCTION + json.dumps([{"id": "a", "prompt": "one", "n": 1}]))),
        # an id that is no string
        variant(lambda b: last(b, INSTRUCTION + json.dumps([{"id": 1, "prompt": "one"}]))),
        # the pack's schema, but the text-only response format
        variant(lambda b: b.update(response_format={"type": "text"})),
        # a plain json_schema request
        variant(lambda b: b.update(response_format={"type": "json_schema", "json_schema": {
            "name": "row", "schema": OBJECT_ITEM}})),
    ]
    for body in near_misses:
        assert read_pack(body) is None
        expected = sim_answer(body) if body["response_format"]["type"] == "text" else sim_json_answer(body)
        assert content(post(url, body)) == expected


def test_the_groq_sdk_sends_a_pack_and_reads_its_answer(start_sim: Start) -> None:
    url, _ = start_sim()
    body = packed(HOSTILE[:3], OBJECT_ITEM)
    with groq.Groq(api_key="gsk_test", base_url=url.removesuffix("/openai/v1"), max_retries=0,
                   timeout=HANG_GUARD_S) as client:
        out = client.chat.completions.create(model=MODEL, messages=body["messages"],
                                             response_format=body["response_format"], temperature=0)
    text = out.choices[0].message.content
    assert text is not None and out.choices[0].finish_reason == "stop"
    assert json.loads(text) == {"answers": [{"id": i, "answer": as_object(p)} for i, p in HOSTILE[:3]]}
    assert out.usage is not None and out.usage.completion_tokens == count_tokens(text)


@pytest.fixture
def batch_client() -> Iterator[Callable[[str], groq.Groq]]:
    clients: list[groq.Groq] = []

    def connect(url: str) -> groq.Groq:
        clients.append(groq.Groq(api_key="gsk_test", base_url=url.removesuffix("/openai/v1"), max_retries=0,
                                 timeout=HANG_GUARD_S))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def run_batch(client: groq.Groq, bodies: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Answer the bodies through the Batch API; the answer's text by custom_id."""
    lines = [{"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b}
             for k, b in bodies.items()]
    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    file_id = client.files.create(file=("rows.jsonl", data), purpose="batch").id
    assert file_id is not None
    batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id
    wait_until(lambda: client.batches.retrieve(batch_id).status in ("completed", "failed"), "the batch")
    done = client.batches.retrieve(batch_id)
    assert done.status == "completed" and done.output_file_id is not None
    raw = client.files.content(done.output_file_id).read().decode()
    # Split on newlines only: splitlines() would also split at the U+2028 that a prompt holds raw.
    output = [json.loads(x) for x in raw.split("\n") if x]
    return {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output}


def test_a_packed_batch_line_is_answered_item_by_item(start_sim: Start,
                                                      batch_client: Callable[[str], groq.Groq]) -> None:
    fast: dict[str, Any] = {"batch_validate_s": 0.02, "batch_finalize_s": 0.02, "batch_lines_per_s": 5000.0}
    items = [(f"r{i}", f"prompt {i}") for i in range(10)]
    bodies = {"p0": packed(HOSTILE), "p1": packed(items, OBJECT_ITEM), "single": alone("just one")}
    url, _ = start_sim(**fast)
    texts = run_batch(batch_client(url), bodies)
    assert json.loads(texts["p0"])["answers"] == [{"id": i, "answer": echo(p)} for i, p in HOSTILE]
    assert json.loads(texts["p1"])["answers"] == [{"id": i, "answer": as_object(p)} for i, p in items]
    assert texts["single"] == echo("just one")

    # Pack faults apply to batch lines too, drawn from the seed when the batch is created.
    faulty = {"p": packed(items), "q": packed(items)}
    url, _ = start_sim(**fast, seed=3, pack_fault_rate=0.4)
    texts = run_batch(batch_client(url), faulty)
    assert set().union(*(observed(items, t) for t in texts.values())) == {"lose", "repeat", "rename"}
    again, _ = start_sim(**fast, seed=3, pack_fault_rate=0.4)
    assert run_batch(batch_client(again), faulty) == texts
