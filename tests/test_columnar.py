"""The columnar path renders exactly what the row-by-row reference renders: same bodies, fingerprints,
token estimates and failures, for every kind of text, type and parameter."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest
from test_prompts import NASTY_VALUES

from batch.job.config import TaskSpec
from batch.records import Request
from batch.render.prompts import GROUP_ROWS, Group, Renderer, RowFailure

MODEL = "openai/gpt-oss-20b"
ODD = ["\x00nul", "bell\x07", "\b back \f feed", "\x1f unit", "\u2028 line sep \u2029", "\x7f del", "é\x0bv"]


def reference(renderer: Renderer, chunk: pa.RecordBatch, row0: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for r in renderer.render_chunk(chunk, row0):
        out.append(("ok", r.fingerprint, r.body, r.est_tokens, r.row) if isinstance(r, Request)
                   else ("failed", r.error, r.row))
    return out


def grouped(renderer: Renderer, chunk: pa.RecordBatch, row0: int) -> tuple[list[tuple[Any, ...]], int]:
    out: list[tuple[Any, ...]] = []
    groups = list(renderer.groups(chunk, row0))
    for g in groups:
        for i, (fp, err) in enumerate(zip(g.fingerprints, g.errors, strict=True)):
            if fp is None:
                assert err is not None
                out.append(("failed", err, g.first_row + i))
            else:
                r = g.request(i)
                assert r.fingerprint == fp
                out.append(("ok", fp, r.body, r.est_tokens, r.row))
    return out, len(groups)


def random_text(rng: random.Random) -> str:
    pool = [*NASTY_VALUES, *ODD, "plain words here", "ünïcödé", "\U0001f600 emoji", '"', "\\", "\n"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 4)))


@pytest.mark.parametrize("system", ["", "You are terse.", "Sys ${name}: \"${b}\""])
@pytest.mark.parametrize("params", [{}, {"temperature": 0.0, "top_p": 0.5, "max_new_tokens": 9, "seed": 3,
                                         "user": "u\"x", "stop": ("a", "\n")}])
def test_same_bytes_as_the_reference(system: str, params: dict[str, Any]) -> None:
    rng = random.Random(7)
    n = 300
    names = [None if rng.random() < 0.05 else random_text(rng) for _ in range(n)]
    chunk = pa.RecordBatch.from_pydict({
        "id": list(range(n)),
        "name": names,
        "b": [None if rng.random() < 0.03 else rng.random() < 0.5 for _ in range(n)],
        "num": [rng.randint(-10**12, 10**12) for _ in range(n)],
        "big": pa.array([random_text(rng) for _ in range(n)], pa.large_string()),
    })
    renderer = Renderer(TaskSpec(model=MODEL, prompt="P ${name} / ${num} / ${big} / ${b} $$ {x}",
                                 system_message=system, **params), key="id")
    want = reference(renderer, chunk, 40)
    got, groups = grouped(renderer, chunk, 40)
    assert groups == 1  # the columnar path served the chunk
    assert got == want
    assert any(w[0] == "failed" for w in want) and any(w[0] == "ok" for w in want)


def test_a_prompt_that_is_one_placeholder() -> None:
    chunk = pa.RecordBatch.from_pydict({"t": ["a", "b\nc", *ODD]})
    renderer = Renderer(TaskSpec(model=MODEL, prompt="${t}"))
    assert grouped(renderer, chunk, 0)[0] == reference(renderer, chunk, 0)


def test_floats_and_histories_go_row_by_row_in_bounded_groups() -> None:
    n = GROUP_ROWS + 5
    chunk = pa.RecordBatch.from_pydict({"f": [1e16 + i for i in range(n)]})
    renderer = Renderer(TaskSpec(model=MODEL, prompt="${f}"))
    got, groups = grouped(renderer, chunk, 0)
    assert got == reference(renderer, chunk, 0)
    assert groups == 2


def test_a_group_of_failed_rows() -> None:
    g = Group.of(5, [RowFailure(5, "bad")])
    assert g.fingerprints == [None] and g.errors == ["bad"] and len(g) == 1
