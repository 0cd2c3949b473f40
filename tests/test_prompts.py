"""Tests for batch.render.prompts: rendering rows into exact request bodies, and their fingerprints."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pyarrow as pa
import pytest

from batch.job.config import TaskSpec
from batch.records import Request
from batch.render.prompts import Renderer, RowFailure

MODEL = "openai/gpt-oss-20b"

NASTY_VALUES = [
    'She said "hi", then \'bye\'',
    "line one\nline two\r\nline three\rend",
    "\u00e9\u00e8 \u5c71\u7530 \U0001f468\u200d\U0001f469\u200d\U0001f467 \u0645\u062d\u0645\u062f",
    "costs $5",
    "two dollars $$ stay two",
    "a placeholder ${x} and ${experience} stay literal",
    "format {0} {name} {{}} stays",
    "back\\slash \\n not a newline",
    "\t leading and trailing \t ",
    "",
    "None",
    "{\"json\": [1, 2]}",
]


def task(**kw: Any) -> TaskSpec:
    kw.setdefault("model", MODEL)
    kw.setdefault("prompt", "Rewrite: ${experience}")
    return TaskSpec(**kw)


def batch(**columns: list[Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(columns)


def one(renderer: Renderer, row: int = 0, **values: Any) -> Request:
    out = renderer.render_chunk(batch(**{k: [v] for k, v in values.items()}), row)
    assert len(out) == 1
    assert isinstance(out[0], Request), out[0]
    return out[0]


def sent(req: Request) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(req.body)
    return body


@pytest.mark.parametrize("value", NASTY_VALUES)
def test_values_reach_the_body_byte_exact(value: str) -> None:
    r = Renderer(task(prompt="<<${experience}>>", system_message="sys [${experience}]"))
    body = sent(one(r, experience=value))
    assert body["messages"] == [
        {"role": "system", "content": f"sys [{value}]"},
        {"role": "user", "content": f"<<{value}>>"},
    ]


def test_dollar_escapes_in_the_template() -> None:
    r = Renderer(task(prompt="Price: $$${price} (not $${price}); $5 and $ alone", system_message=""))
    body = sent(one(r, price="12"))
    assert body["messages"] == [{"role": "user", "content": "Price: $12 (not ${price}); $5 and $ alone"}]


def test_values_are_never_rescanned_as_templates() -> None:
    r = Renderer(task(prompt="${a}|${b}", system_message=""))
    body = sent(one(r, a="${b}", b="$$"))
    assert body["messages"][0]["content"] == "${b}|$$"


def test_non_string_cells_are_rendered_as_written() -> None:
    r = Renderer(task(prompt="${n} ${f} ${t} ${s}", system_message=""))
    out = r.render_chunk(batch(n=[7], f=[2.5], t=[True], s=["007"]), 0)
    assert isinstance(out[0], Request)
    assert sent(out[0])["messages"][0]["content"] == "7 2.5 true 007"


def test_null_in_a_template_column_fails_the_row_naming_column_and_1_based_row() -> None:
    r = Renderer(task(prompt="${name}: ${experience}", system_message="About ${name}"))
    out = r.render_chunk(batch(name=["ann", None, "cy"], experience=["x", "y", None]), 10)
    assert isinstance(out[0], Request)
    assert isinstance(out[1], RowFailure) and isinstance(out[2], RowFailure)
    assert out[1].row == 11 and out[2].row == 12
    assert "row 12" in out[1].error and "'name'" in out[1].error
    assert "row 13" in out[2].error and "'experience'" in out[2].error
    assert "None" not in out[1].error.replace("null", "")


def test_null_in_a_column_the_templates_do_not_use_is_fine() -> None:
    r = Renderer(task())
    out = r.render_chunk(batch(experience=["x"], unused=[None]), 0)
    assert isinstance(out[0], Request)


def test_parameters_zero_is_sent_top_k_never_max_new_tokens_renamed() -> None:
    r = Renderer(task(temperature=0.0, seed=0, top_p=0.5, top_k=10, max_new_tokens=300, user="batch"))
    body = sent(one(r, experience="x"))
    assert body["temperature"] == 0
    assert body["seed"] == 0
    assert body["top_p"] == 0.5
    assert body["max_completion_tokens"] == 300
    assert body["user"] == "batch"
    for absent in ("top_k", "max_tokens", "max_new_tokens", "top-k", "stream", "n"):
        assert absent not in body
    assert body["model"] == MODEL


def test_unset_parameters_are_not_sent() -> None:
    body = sent(one(Renderer(task()), experience="x"))
    assert set(body) == {"model", "messages"}


def test_default_system_message_comes_first() -> None:
    body = sent(one(Renderer(task()), experience="x"))
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert body["messages"][-1] == {"role": "user", "content": "Rewrite: x"}


def test_body_is_valid_compact_json_with_raw_unicode() -> None:
    req = one(Renderer(task()), experience="\u00e9\u5c71")
    assert json.loads(req.body)["messages"][-1]["content"] == "Rewrite: \u00e9\u5c71"
    assert "\u00e9\u5c71".encode() in req.body
    assert req.est_tokens > 0


def test_fingerprint_is_stable_across_calls_rows_and_renderers() -> None:
    a = one(Renderer(task(temperature=0.2)), row=0, experience="same")
    b = one(Renderer(task(temperature=0.2)), row=999, experience="same")
    assert a.fingerprint == b.fingerprint
    assert a.body == b.body
    assert a.row == 0 and b.row == 999


def test_identical_rows_give_identical_fingerprints() -> None:
    out = Renderer(task()).render_chunk(batch(experience=["a", "b", "a"]), 0)
    fps = [r.fingerprint for r in out if isinstance(r, Request)]
    assert fps[0] == fps[2] != fps[1]


@pytest.mark.parametrize("change", [
    {"model": "openai/gpt-oss-120b"},
    {"prompt": "Rewrite:  ${experience}"},
    {"system_message": "You are terse."},
    {"temperature": 0.0},
    {"temperature": 0.3},
    {"top_p": 0.9},
    {"seed": 0},
    {"seed": 8},
    {"max_new_tokens": 301},
    {"user": "someone"},
], ids=lambda c: next(iter(c)))
def test_fingerprint_changes_with_anything_sent(change: dict[str, Any]) -> None:
    base = task(temperature=0.05, top_p=0.5, seed=7, max_new_tokens=300, user="batch")
    before = one(Renderer(base), experience="x").fingerprint
    after = one(Renderer(dataclasses.replace(base, **change)), experience="x").fingerprint
    assert before != after


def test_fingerprint_ignores_what_is_not_sent() -> None:
    base = task(temperature=0.05)
    assert one(Renderer(base), experience="x").fingerprint == \
        one(Renderer(dataclasses.replace(base, top_k=40)), experience="x").fingerprint


def test_fingerprint_changes_with_the_value() -> None:
    r = Renderer(task())
    assert one(r, experience="x").fingerprint != one(r, experience="x ").fingerprint


def test_estimate_covers_the_completion_budget() -> None:
    small = one(Renderer(task(max_new_tokens=10)), experience="x")
    big = one(Renderer(task(max_new_tokens=5000)), experience="x")
    assert 4990 <= big.est_tokens - small.est_tokens <= 4991
    assert small.est_tokens >= 10


def test_images_are_image_url_parts_before_the_text() -> None:
    r = Renderer(task(prompt_images="photo"))
    body = sent(one(r, experience="x", photo="https://example.com/cat.png"))
    assert body["messages"][-1]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "Rewrite: x"},
    ]


def test_chat_history_replaces_the_system_message() -> None:
    r = Renderer(task(chat_history="history"))
    hist = json.dumps([{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}])
    body = sent(one(r, experience="x", history=hist))
    assert body["messages"] == [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "Rewrite: x"},
    ]


def test_more_than_five_images_in_one_request_fail_the_row() -> None:
    r = Renderer(task(chat_history="history", prompt_images="photo"))
    pic = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    hist = json.dumps([{"role": "user", "content": [pic, pic, pic]}, {"role": "assistant", "content": "ok"}])
    out = r.render_chunk(batch(experience=["x"], history=[hist],
                               photo=[json.dumps(["https://example.com/b.png"] * 3)]), 0)
    assert isinstance(out[0], RowFailure)
