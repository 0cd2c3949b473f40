"""What the Python door takes in: hostile values through every kind of input, unchanged both ways, and
the inputs it cannot use refused before any request, as `batch.JobError` saying what to do.

Every run goes to a real simulator on a loopback socket (`base_url=`): its log shows what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import batch
from batch.sim import Simulator, sim_answer

MODEL = "openai/gpt-oss-20b"
LONG = ('é"\r\n,' * 2500)[:10_000]  # 10 KB of what breaks naive quoting
HOSTILE = ['he said "hi",\r\nthen left', "lone\rCR", "line\nfeed", "${body} ${x} {0} $$ 100%", "", None,
           "\u202eRTL \u0645\u062d\u0645\u062f \u05d3\u05d5\u05d3", LONG, " padded ", "NULL", "\t"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_kinds_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)


def run(data: Any, url: str, **more: Any) -> Any:
    return batch.run(data, model=MODEL, prompt="Summarize: ${body}", max_new_tokens=8192, base_url=url,
                     progress=False, requests_per_minute=600_000, tokens_per_minute=100_000_000, **more)


def expected(body: str) -> str:
    return sim_answer({"model": MODEL, "messages": [{"role": "user", "content": "Summarize: " + body}]})


def column(out: Any, name: str) -> list[Any]:
    if isinstance(out, pd.DataFrame):
        return [None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v
                for v in out[name]]
    if isinstance(out, pl.DataFrame):
        return list(out[name].to_list())
    return list(out.column(name).to_pylist())


# `label` is categorical where the kind has categoricals (pandas category, polars Categorical, DuckDB ENUM).
TABLE = pa.table({"n": list(range(len(HOSTILE))), "body": HOSTILE, "other": HOSTILE[::-1],
                  "label": pa.array(HOSTILE).dictionary_encode()})


def _duckdb(_: Path) -> Any:
    con = duckdb.connect()
    con.register("t", TABLE)
    return con.sql("SELECT n, body, other, label FROM t ORDER BY n")


def _file(suffix: str, write: Callable[[Path], object]) -> Callable[[Path], Any]:
    def make(folder: Path) -> str:
        path = folder / f"rows.{suffix}"
        write(path)
        return str(path)
    return make


KINDS: dict[str, Callable[[Path], Any]] = {
    "pandas": lambda _: TABLE.to_pandas(),
    "arrow table": lambda _: TABLE,
    "record batch": lambda _: TABLE.to_batches()[0],
    "record batch reader": lambda _: pa.RecordBatchReader.from_batches(TABLE.schema, TABLE.to_batches(4)),
    "polars": lambda _: pl.from_arrow(TABLE),
    "duckdb": _duckdb,
    "csv path": _file("csv", lambda p: pacsv.write_csv(TABLE, p)),
    "jsonl path": _file("jsonl", lambda p: p.write_text("".join(
        json.dumps(row) + "\n" for row in TABLE.to_pylist()), encoding="utf-8")),
    "parquet path": _file("parquet", lambda p: pq.write_table(TABLE, p)),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_values_round_trip_through_each_kind(kind: str, tmp_path: Path,
                                                     simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    out = run(KINDS[kind](tmp_path), url)

    for name, want in (("body", HOSTILE), ("other", HOSTILE[::-1]), ("label", HOSTILE)):
        assert column(out, name) == want, name  # the prompt's column and those it does not use
    for body, text, error in zip(HOSTILE, column(out, "text"), column(out, "error"), strict=True):
        if body is None:
            assert text is None and "'body' is empty" in error
        else:
            assert text == expected(body) and error is None, repr(body[:40])
    assert sum(1 for e in sim.log if e.status == 200) == len(HOSTILE) - 1


def test_a_named_pandas_series_is_a_one_column_frame(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    series = pd.Series(["a", "b"], name="body", index=["p", "q"])
    out = run(series, url)
    assert isinstance(out, pd.DataFrame) and list(out.index) == ["p", "q"]
    assert list(out["body"]) == ["a", "b"] and list(out["text"]) == [expected("a"), expected("b")]


def _int128() -> Any:
    return pl.DataFrame({"body": ["a"], "big": pl.Series([1], dtype=pl.Int128)})


def _failing_query() -> Any:
    # Fails when read, not when made: the error is the query's, met while the rows stream in.
    return duckdb.connect().sql("SELECT 'a' AS body, CAST(CASE WHEN i > 0 THEN 'x' ELSE '1' END AS INT) AS n "
                                "FROM range(2) r(i)")


REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "duplicate names": (lambda: pd.DataFrame([[1, "a", 2]], columns=["a", "body", "a"]),
                        r"duplicate column names: 'a' \(columns 0 and 2\).*rename them"),
    "three of a name": (lambda: pa.table([[1], ["a"], [2], [3]], names=["a", "body", "a", "a"]),
                        r"duplicate column names: 'a' \(columns 0, 2 and 3\)"),
    "unnamed series": (lambda: pd.Series(["a"]), r"Series without a name.*series.to_frame\('body'\)"),
    "polars series": (lambda: pl.Series("body", ["a"]), r"one column, not a table.*to_frame\(\)"),
    "polars object": (lambda: pl.DataFrame({"body": ["a"], "o": pl.Series([object()], dtype=pl.Object)}),
                      r"Object column\(s\) 'o'"),
    "polars int128": (_int128, r"column\(s\) 'big' \(Int128"),
    "failing query": (_failing_query, r"reading the DuckDBPyRelation stream failed.*Conversion"),
    "complex numbers": (lambda: pd.DataFrame({"body": ["a"], "c": [1 + 2j]}), r"column c with type complex"),
    "not a table": (lambda: {"body": ["a"]}, r"DataFrame, a pyarrow Table"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_inputs_that_cannot_be_used_are_refused_before_sending(case: str,
                                                               simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    make, message = REFUSED[case]
    with pytest.raises(batch.JobError, match=message) as info:
        run(make(), url)
    assert isinstance(info.value, ValueError) and str(info.value).startswith("data: ")
    with pytest.raises(batch.JobError, match=message):
        batch.plan(make(), model=MODEL, prompt="Summarize: ${body}", base_url=url)
    assert sim.log == [], "a request was sent for data that cannot be used"
