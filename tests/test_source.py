"""Tests for batch.tables.source: CSV, Parquet and JSONL read exactly, streamed in batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nasty import nasty_rows, write_csv

from batch.errors import InputError
from batch.tables.source import Source


def rows(src: Source, limit: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for b in src.chunks(limit):
        out.extend(b.to_pylist())
    return out


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


# -- CSV -------------------------------------------------------------------------------------------
def test_csv_values_are_strings_exactly_as_written(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv",
              'id,zip,price,flag,date\n007,01234,1.50,true,2024-01-02\n1e3,-0,NaN,FALSE, x \n')
    src = Source(p, "csv")
    assert src.columns == ["id", "zip", "price", "flag", "date"]
    assert all(f.type == pa.string() for f in src.schema)
    assert rows(src) == [
        {"id": "007", "zip": "01234", "price": "1.50", "flag": "true", "date": "2024-01-02"},
        {"id": "1e3", "zip": "-0", "price": "NaN", "flag": "FALSE", "date": " x "},
    ]
    assert src.num_rows == 2


def test_csv_empty_unquoted_is_null_quoted_is_empty_string_and_na_words_are_text(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", 'a,b,c,d,e,f\n,"",NA,None,nan,NULL\n"N/A",null,#N/A,-NaN,n/a,\n')
    assert rows(Source(p, "csv")) == [
        {"a": None, "b": "", "c": "NA", "d": "None", "e": "nan", "f": "NULL"},
        {"a": "N/A", "b": "null", "c": "#N/A", "d": "-NaN", "e": "n/a", "f": None},
    ]


def test_csv_newlines_quotes_and_commas_inside_quoted_fields(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv",
              'id,text\n1,"line one\nline two\r\nthree"\n2,"she said ""hi"", ok"\n3,"a,b"\n')
    assert [r["text"] for r in rows(Source(p, "csv"))] == [
        "line one\nline two\r\nthree", 'she said "hi", ok', "a,b"]


def test_csv_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", b"\xef\xbb\xbfid,name\n1,\xc3\xa9\n")
    src = Source(p, "csv")
    assert src.columns == ["id", "name"]
    assert rows(src) == [{"id": "1", "name": "\u00e9"}]


def test_csv_crlf_line_endings(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", "id,name\r\n1,a\r\n2,b\r\n")
    assert rows(Source(p, "csv")) == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]


def test_csv_limit(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", "id\n" + "".join(f"{i}\n" for i in range(10)))
    src = Source(p, "csv")
    assert [r["id"] for r in rows(src, limit=3)] == ["0", "1", "2"]
    assert rows(src, limit=0) == []
    assert len(rows(src, limit=100)) == 10
    assert len(rows(src)) == 10  # batches() can be read again


def test_big_csv_streams_in_many_batches_in_order(tmp_path: Path) -> None:
    n = 50_000
    filler = "x" * 80
    p = tmp_path / "big.csv"
    with p.open("w", encoding="utf-8") as f:
        f.write("id,text\n")
        for i in range(n):
            f.write(f"{i:06d},{filler}\n")
    src = Source(p, "csv")
    assert src.num_rows == n
    batches = list(src.chunks())
    assert len(batches) > 1
    ids = [v for b in batches for v in b.column("id").to_pylist()]
    assert ids == [f"{i:06d}" for i in range(n)]
    limited = list(src.chunks(limit=n - 7))
    assert sum(b.num_rows for b in limited) == n - 7
    assert limited[-1].column("id").to_pylist()[-1] == f"{n - 8:06d}"


def test_csv_ragged_row_is_an_input_error(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", "a,b\n1,2\n3\n")
    with pytest.raises(InputError):
        Source(p, "csv")


def test_csv_duplicate_column_names(tmp_path: Path) -> None:
    p = write(tmp_path / "in.csv", "id,name,id\n1,a,2\n")
    with pytest.raises(InputError, match="duplicate"):
        Source(p, "csv")


def test_empty_csv_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Source(write(tmp_path / "in.csv", ""), "csv")


# -- Parquet ---------------------------------------------------------------------------------------
def test_parquet_keeps_types(tmp_path: Path) -> None:
    table = pa.table({
        "id": pa.array([1, 2, None], pa.int64()),
        "score": pa.array([0.5, None, 2.0], pa.float64()),
        "ok": pa.array([True, False, None]),
        "name": pa.array(["007", "", None]),
        "tags": pa.array([["a"], [], None], pa.list_(pa.string())),
    })
    p = tmp_path / "in.parquet"
    pq.write_table(table, p, row_group_size=2)
    src = Source(p, "parquet")
    assert src.schema.field("id").type == pa.int64()
    assert src.schema.field("score").type == pa.float64()
    assert src.num_rows == 3
    assert rows(src) == table.to_pylist()
    assert rows(src, limit=2) == table.to_pylist()[:2]


def test_parquet_duplicate_column_names(tmp_path: Path) -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    p = tmp_path / "dup.parquet"
    pq.write_table(table, p)
    with pytest.raises(InputError, match="duplicate"):
        Source(p, "parquet")


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Source(write(tmp_path / "in.parquet", "id,name\n1,a\n"), "parquet")


# -- JSONL -----------------------------------------------------------------------------------------
def jsonl(path: Path, objs: list[Any], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    return write(path, sep.join(json.dumps(o, ensure_ascii=False) for o in objs) + "\n")


def test_jsonl_types_nesting_and_mixed_columns(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "in.jsonl", [
        {"id": 1, "name": "a", "score": 1, "mixed": 5, "nested": {"k": [1, 2]}, "flag": True},
        {"id": 2, "name": "\u00e9", "score": 2.5, "mixed": "five", "nested": [1, "x"], "flag": None},
        {"id": 3, "score": None, "mixed": None, "late": "only here"},
    ], blank_lines=True)
    src = Source(p, "jsonl")
    assert src.columns == ["id", "name", "score", "mixed", "nested", "flag", "late"]
    assert src.schema.field("id").type == pa.int64()
    assert src.schema.field("score").type == pa.float64()
    assert src.schema.field("flag").type == pa.bool_()
    assert src.schema.field("mixed").type == pa.string()
    assert src.schema.field("nested").type == pa.string()
    got = rows(src)
    assert [r["id"] for r in got] == [1, 2, 3]
    assert [r["name"] for r in got] == ["a", "\u00e9", None]
    assert [r["score"] for r in got] == [1.0, 2.5, None]
    assert got[0]["mixed"] == "5" and got[1]["mixed"] == "five" and got[2]["mixed"] is None
    assert json.loads(got[0]["nested"]) == {"k": [1, 2]}
    assert json.loads(got[1]["nested"]) == [1, "x"]
    assert got[2]["late"] == "only here" and got[0]["late"] is None
    assert src.num_rows == 3


def test_jsonl_many_batches_in_order(tmp_path: Path) -> None:
    n = 10_000
    p = jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    src = Source(p, "jsonl")
    batches = list(src.chunks())
    assert len(batches) > 1
    assert [v for b in batches for v in b.column("i").to_pylist()] == list(range(n))
    assert sum(b.num_rows for b in src.chunks(limit=5000)) == 5000


def test_jsonl_invalid_line_names_its_line_number(tmp_path: Path) -> None:
    p = write(tmp_path / "in.jsonl", '{"a": 1}\n\n{"a": 2}\n{"a": 3,}\n{"a": 4}\n')
    with pytest.raises(InputError, match=r":4\b"):
        Source(p, "jsonl")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    p = write(tmp_path / "in.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r":2\b"):
        Source(p, "jsonl")


def test_jsonl_invalid_utf8_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Source(write(tmp_path / "in.jsonl", b'{"a": "\xff"}\n'), "jsonl")


# -- any format ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_missing_file_is_an_input_error(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Source(tmp_path / f"nope.{fmt}", fmt)


def test_unknown_format_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Source(write(tmp_path / "in.txt", "a\n1\n"), "xlsx")


def test_jsonl_integer_beyond_int64_is_refused_up_front_or_kept(tmp_path: Path) -> None:
    p = write(tmp_path / "in.jsonl", '{"id": 1, "t": "a"}\n{"id": 99999999999999999999, "t": "b"}\n')
    try:
        src = Source(p, "jsonl")
    except InputError as exc:  # refused before anything is sent, naming the line: fine
        assert ":2" in str(exc)
        return
    got = rows(src)  # must not crash after the run has started
    assert [str(r["id"]) for r in got] == ["1", "99999999999999999999"]


def test_jsonl_lone_surrogate_is_refused_up_front_or_replaced(tmp_path: Path) -> None:
    p = write(tmp_path / "in.jsonl", '{"t": "ok \\ud83d\\ude00"}\n{"t": "half \\ud800 a pair"}\n')
    try:
        src = Source(p, "jsonl")
    except InputError as exc:
        assert ":2" in str(exc)
        return
    got = rows(src)
    assert got[0]["t"] == "ok \U0001f600"
    assert got[1]["t"].startswith("half ")


def test_a_quoted_crlf_cut_by_a_block_boundary_is_read_whole(tmp_path: Path) -> None:
    # 20,000 hostile rows (seed 11) put a quoted "\r\n" across a 256 KB block boundary, where pyarrow's
    # streaming reader dropped the "\n": every value must come back exactly as written.
    rows = nasty_rows(20_000, seed=11)
    path = tmp_path / "in.csv"
    write_csv(rows, path)
    got = [v for _, chunk in Source(path, "csv").numbered() for v in chunk.column("experience").to_pylist()]
    assert got == [r["experience"] for r in rows]


def test_a_csv_is_parsed_once_and_read_back_from_its_spool_as_often_as_asked(tmp_path: Path) -> None:
    # The opening scan keeps the parsed chunks in a nameless file in `spool_in`; every reading starts
    # at the first row, two readings at once do not disturb each other, and the file is gone at close
    # (nothing named is left beside the state, even by a process killed mid-run).
    n, spool = 30_000, tmp_path / "state"
    spool.mkdir()
    p = tmp_path / "in.csv"
    p.write_text("id,text\n" + "".join(f'{i},"line {i}\r\nwith ""quotes"", ünï ✓"\n' for i in range(n)),
                 encoding="utf-8")
    src = Source(p, "csv", spool_in=spool)
    p.unlink()  # the reads below come from the spool, not the file
    want = [f"{i}" for i in range(n)]
    first, second = src.chunks(), src.chunks()
    interleaved: list[str] = []
    for a, b in zip(first, second, strict=True):  # in step: each reading has its own position
        assert a.equals(b)
        interleaved += a.column("id").to_pylist()
    assert interleaved == want
    again = [v for _, c in src.numbered(limit=10) for v in c.column("text").to_pylist()]
    assert again == [f'line {i}\r\nwith "quotes", ünï ✓' for i in range(10)]
    assert list(spool.iterdir()) == []
    src.close()
