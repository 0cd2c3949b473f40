"""Every Arrow type a table can carry, through the Python door: in a column the prompt uses and in one it
does not, with nulls, from a pyarrow Table, polars, pandas and DuckDB, into a Parquet and a CSV output.

The caller's columns come back exactly (values and types: a polars Enum keeps its unused categories);
a used column's value reaches the prompt (the simulator echoes the prompt); a null fails its row as a
value; nothing raises after a request was sent.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import batch
from batch.render.prompts import as_text
from batch.sim import Simulator

MODEL = "openai/gpt-oss-20b"
D = decimal.Decimal
TS = dt.datetime(2024, 1, 2, 3, 4, 5, 678901)
INTERVAL_TEXT = '{"months": 1, "days": 2, "nanoseconds": 3}'  # an interval reads as its three parts


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_kinds_0123456789")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)


def run(data: Any, url: str, columns: list[str], **more: Any) -> Any:
    """`data` with a prompt of one `name=${name}` line per column in `columns`."""
    prompt = "\n".join(f"{c}=${{{c}}}" for c in columns)
    return batch.run(data, model=MODEL, prompt=prompt, max_new_tokens=4096, base_url=url, progress=False,
                     requests_per_minute=600_000, tokens_per_minute=100_000_000, **more)


def prompted(text: str) -> dict[str, str]:
    """The simulator's answer is the model, then the prompt: each `name=value` line of it."""
    return dict(line.split("=", 1) for line in text.split("] ", 1)[1].split("\n"))


def arrow_columns() -> dict[str, pa.Array]:
    """One column of each type, three rows: a value, a null, a value."""
    sv = pa.array(["x", None, "y"], pa.string_view())
    int_or_text = [pa.array([1, None, 0]), pa.array(["", "", "s"])]
    return {
        "bool": pa.array([True, None, False]), "uint64": pa.array([2**64 - 1, None, 0], pa.uint64()),
        "float16": pa.array([1.5, None, -2.0], pa.float32()).cast(pa.float16()),
        "float64": pa.array([1e16, None, float("inf")]),
        "decimal32": pa.array([D("1.23"), None, D("-4.56")], pa.decimal32(5, 2)),
        "decimal256": pa.array([D("1.23"), None, D("-4.56")], pa.decimal256(50, 2)),
        "date64": pa.array([dt.date(2024, 1, 2), None, dt.date(1970, 1, 1)], pa.date64()),
        "time32": pa.array([dt.time(1, 2, 3), None, dt.time(0)], pa.time32("s")),
        "time64": pa.array([3_723_000_000_001, None, 0], pa.time64("ns")),
        "ts_tz": pa.array([TS, None, TS], pa.timestamp("us", "Europe/Paris")),
        "ts_s": pa.array([TS.replace(microsecond=0), None, TS.replace(microsecond=0)], pa.timestamp("s")),
        "duration": pa.array([1, None, -5], pa.duration("ns")),
        "interval": pa.array([pa.MonthDayNano([1, 2, 3]), None, pa.MonthDayNano([0, 0, -1])]),
        "large_string": pa.array(["a", None, ""], pa.large_string()), "string_view": sv,
        "large_binary": pa.array([b"\x00\xff", None, b""], pa.large_binary()),
        "binary_view": pa.array([b"\x00\xff", None, b"over twelve bytes long"], pa.binary_view()),
        "fixed_binary": pa.array([b"ab", None, b"cd"], pa.binary(2)),
        "large_list": pa.array([[1, None], None, []], pa.large_list(pa.int64())),
        "list_view": pa.array([[1, None], None, []], pa.list_view(pa.int64())),
        "large_list_view": pa.array([["a"], None, []], pa.large_list_view(pa.string_view())),
        "fixed_list": pa.array([[1, 2], None, [None, 4]], pa.list_(pa.int64(), 2)),
        "struct": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": None}],
                           pa.struct([("a", pa.int64()), ("b", pa.string_view())])),
        "map": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
        "dict_large_string": pa.array(["x", None, "y"], pa.large_string()).dictionary_encode(),
        "dict_string_view": sv.dictionary_encode(),
        "dict_string_view_u8_ordered": pa.DictionaryArray.from_arrays(
            pa.array([0, None, 1], pa.uint8()), pa.array(["x", "y", "unused"], pa.string_view()),
            ordered=True),
        "dict_binary_view": pa.array([b"x", None, b"y"], pa.binary_view()).dictionary_encode(),
        "dict_int": pa.array([5, None, 7]).dictionary_encode(),
        "list_of_dict_string_view": pa.ListArray.from_arrays(
            pa.array([0, 2, 2, 3], pa.int32()), sv.dictionary_encode(),
            mask=pa.array([False, True, False])),
        "struct_of_interval": pa.array([{"i": pa.MonthDayNano([1, 2, 3])}, None, {"i": None}],
                                       pa.struct([("i", pa.month_day_nano_interval())])),
        "dense_union": pa.UnionArray.from_dense(pa.array([0, 0, 1], pa.int8()),
                                                pa.array([0, 1, 2], pa.int32()), int_or_text),
        "sparse_union": pa.UnionArray.from_sparse(pa.array([0, 0, 1], pa.int8()), int_or_text),
        "run_end_encoded": pa.RunEndEncodedArray.from_arrays(pa.array([1, 2, 3], pa.int32()),
                                                             pa.array(["a", None, "a"])),
        "ree_of_dict_string_view": pa.RunEndEncodedArray.from_arrays(pa.array([1, 2, 3], pa.int32()),
                                                                     sv.dictionary_encode()),
        "uuid": pa.array([uuid.UUID(int=1).bytes, None, uuid.UUID(int=2).bytes], pa.uuid()),
        "json": pa.array(['{"a": 1}', None, "[]"], pa.json_(pa.string())),
    }


def test_every_arrow_type_used_or_not_comes_back_exactly(simulator: tuple[str, Simulator]) -> None:
    url, sim = simulator
    columns = arrow_columns()
    table = pa.table({"body": ["a", "b", "c"], **columns, "null": pa.nulls(3)})

    for used in ([], list(columns)):
        out = run(table, url, ["body", *used])
        assert isinstance(out, pa.Table) and out.num_rows == 3
        for name in table.column_names:
            assert out.column(name).type == table.column(name).type, name
            assert out.column(name).equals(table.column(name)), name
        errors, texts = out.column("error").to_pylist(), out.column("text").to_pylist()
        assert errors[0] is None and errors[2] is None
        assert (errors[1] is None) == (not used), errors[1]
        seen = prompted(texts[0])
        for name in used:  # the row's value, as a prompt shows it
            value = table.column(name)[0].as_py()
            want = {"interval": INTERVAL_TEXT, "struct_of_interval": f'{{"i": {INTERVAL_TEXT}}}'}
            assert seen[name] == want.get(name, as_text(value)), name
    assert sum(1 for e in sim.log if e.status == 200) == 3 + 2

    out = run(table, url, ["null"])  # a column with no value at all: every row fails, nothing is sent
    assert all("'null' is empty" in e for e in out.column("error").to_pylist())
    assert sum(1 for e in sim.log if e.status == 200) == 5


def test_polars_categorical_enum_and_friends(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    df = pl.DataFrame({
        "body": ["a", "b", "c"],
        "cat": pl.Series(["x", None, "y"], dtype=pl.Categorical),
        "enum": pl.Series(["x", None, "y"], dtype=pl.Enum(["x", "y", "unused"])),
        "text": ["a", None, ""], "bytes": pl.Series([b"x\xff", None, b""]),
        "list": [[1], None, []], "struct": [{"a": "s"}, None, {"a": None}],
        "array": pl.Series([[1, 2], None, [3, None]], dtype=pl.Array(pl.Int64, 2)),
        "when": pl.Series([TS, None, dt.datetime(1970, 1, 1)]).dt.replace_time_zone("Asia/Tokyo"),
        "took": pl.Series([dt.timedelta(1), None, dt.timedelta(0)]),
        "at": pl.Series([dt.time(1), None, dt.time(0)]),
        "amount": pl.Series([D("1.5"), None, D("-0.1")]),
        "nothing": pl.Series([None, None, None], dtype=pl.Null),
        "tags": pl.Series([["a"], None, [None]], dtype=pl.List(pl.Categorical)),
        "day": pl.Series([dt.date(2024, 1, 1), None, dt.date(1, 1, 1)]),
    }).rename({"text": "words"})
    for used in ([], [c for c in df.columns if c != "nothing"]):
        back = run(df, url, ["body", *used])  # polars in, polars out
        assert isinstance(back, pl.DataFrame)
        assert back.select(df.columns).equals(df) and back.select(df.columns).schema == df.schema
        assert back["error"].to_list()[0] is None
        assert (back["error"].to_list()[1] is None) == (not used)
    seen = prompted(back["text"].to_list()[0])
    assert (seen["cat"], seen["enum"], seen["tags"]) == ("x", "x", '["a"]')


def test_pandas_dtypes(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    arrow = arrow_columns()
    spans: list[Any] = [(0, 1), None, (1, 2)]
    days: list[Any] = ["2024-01-01", None, "1970-01-01"]
    df = pd.DataFrame({
        "body": ["a", "b", "c"],
        "category": pd.Categorical(["x", None, "y"], categories=["y", "x", "unused"], ordered=True),
        "Int64": pd.array([1, None, 3], dtype="Int64"), "string": pd.array(["a", None, ""], dtype="string"),
        "period": pd.array([pd.Period("2024-01", "M"), None, pd.Period("1970-01", "M")]),
        "interval": pd.arrays.IntervalArray.from_tuples(spans),
        "utc": pd.to_datetime(days).tz_localize("UTC"),
        "timedelta": pd.to_timedelta(["1D", None, "0s"]), "objects": [{"a": 1}, None, {"a": None}],
        "float": [1.5, None, float("inf")],
        **{f"arrow_{name}": pd.arrays.ArrowExtensionArray(pa.chunked_array([arrow[name]]))
           for name in ("string_view", "dict_string_view", "large_list_view", "interval", "sparse_union")},
    }, index=[10, 20, 30])
    for used in ([], list(df.columns)):
        out = run(df, url, ["body", *used])
        plain = [c for c in df.columns if not c.startswith("arrow_")]
        pd.testing.assert_frame_equal(out[plain], df[plain])
        for name in set(df.columns) - set(plain):  # pandas' own comparison knows no string_view
            assert out[name].dtype == df[name].dtype and list(out.index) == list(df.index), name
            assert pa.array(out[name].array).equals(pa.array(df[name].array)), name
        assert pd.isna(out["error"].iloc[0]) and pd.isna(out["error"].iloc[1]) == (not used)


def test_duckdb_types(simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    value = ("'x'::ENUM('x', 'y', 'unused') AS e, INTERVAL 1 DAY AS i, "
             "union_value(num := 2)::UNION(num INT, s VARCHAR) AS u, MAP {'k': 1} AS m, "
             "'00000000-0000-0000-0000-000000000001'::UUID AS id, "
             "170141183460469231731687303715884105727::HUGEINT AS h, "
             "'\\xFF'::BLOB AS b, '{\"a\": 1}'::JSON AS j, '12:00:00+01'::TIMETZ AS ttz, '101'::BIT AS bits, "
             "[1, 2] AS l, {'a': 1} AS s, [1, 2]::INT[2] AS arr, TIMESTAMPTZ '2024-01-01 00:00+00' AS tz, "
             "1.5::DECIMAL(10, 2) AS dec, 1::VARINT AS vi, TIMESTAMP_NS '2024-01-01' AS tns")
    names = [part.rsplit(" AS ", 1)[1] for part in value.split(", ") if " AS " in part]
    nulls = ", ".join(f"NULL AS {n}" for n in names)
    query = (f"SELECT * FROM (SELECT 1 AS n, 'a' AS body, {value} UNION ALL SELECT 2, 'b', {nulls} "
             f"UNION ALL SELECT 3, 'c', {value}) ORDER BY n")
    con = duckdb.connect()
    given = pa.RecordBatchReader.from_stream(con.sql(query)).read_all()
    for used in ([], names):
        out = run(con.sql(query), url, ["body", *used])
        for name in given.column_names:
            assert out.column(name).type == given.column(name).type, name
            assert out.column(name).equals(given.column(name)), name
        errors = out.column("error").to_pylist()
        assert errors[0] is None and errors[2] is None and (errors[1] is None) == (not used)


def test_a_csv_output_and_a_stopped_run_keep_the_callers_columns(tmp_path: Path,
                                                                   simulator: tuple[str, Simulator]) -> None:
    url, _ = simulator
    columns = arrow_columns()
    table = pa.table({"body": ["a", "b", "c"], **columns})
    parquet = run(table, url, ["body"])
    out = run(table, url, ["body"], output=str(tmp_path / "answers.csv"))
    assert out.drop_columns(["latency_s"]).equals(parquet.drop_columns(["latency_s"]))
    written = {line.split(",", 1)[0]: line for line in (tmp_path / "answers.csv").read_text().splitlines()}
    assert written['"a"'].count('"x"') >= 2 and "\\xff" in written['"a"']  # categoricals, bytes as text

    with pytest.raises(batch.Stopped) as info:
        run(table.append_column("more", pa.array(["p", "q", "r"])), url, ["more"], mode="batch", wait=False)
    partial = info.value.partial
    assert isinstance(partial, pa.Table) and partial.select(table.column_names).equals(table)
    assert json.loads((partial.schema.metadata or {})[b"batch"])["status"] == "stopped"
