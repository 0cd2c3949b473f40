"""Tests for batch.tables.source: CSV, Parquet and JSONL read exactly, streamed in batches."""

from __future__ import annotations

import csv
import itertools
import json
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MODEL
from nasty import nasty_rows, write_csv

import batch
from batch.errors import InputError
from batch.sim import Simulator
from batch.tables import csvfile
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


# -- CSV: a quoted "\r\n" where a block ends -------------------------------------------------------
# pyarrow drops the "\n" of a "\r\n" that two of its blocks cut in two (apache/arrow#51368), a block
# being one read of its input. Every block the reader uses is FIRST_BLOCK times a power of two, so a
# multiple of STEP: a "\r" on the last byte of every STEP bytes is on the last byte of every block.
STEP = 64 << 10
# Byte -> byte, for random filler that needs no quoting rules of its own: letters, spaces, commas.
FILLER = bytes.maketrans(bytes(range(256)), bytes(b"abcdefghijklmnopqrstuvwxyz ,"[i % 28]
                                                  for i in range(256)))
RunBatch = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def long_csv_fields() -> Iterator[None]:
    """Python's csv module refuses a field over 128 KiB unless told otherwise (a process-wide limit)."""
    before = csv.field_size_limit(1 << 30)
    yield
    csv.field_size_limit(before)


def by_csv_module(path: Path) -> list[list[str]]:
    """The file's records as Python's csv module reads them (header first; null and "" are both "")."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def crlf_at(path: Path, size: int, crs: set[int], long_cell: tuple[int, int] = (0, 0), seed: int = 0,
            names: str = "id,text", before: Callable[[int], str] = "{},".format) -> None:
    """About `size` bytes of CSV (CR LF line ends; each row: `before(row number)`, then one quoted value)
    whose values hold a "\\r\\n" with the "\\r" on every offset in `crs` (the row syntax around
    values is kept off them); the first row starting at or after `long_cell[0]` has a value
    `long_cell[1]` bytes long."""
    rnd, out, row = random.Random(seed), bytearray(f"{names}\r\n".encode()), 0
    at, length = long_cell
    while len(out) < size:
        prefix = f'{before(row)}"'.encode()
        start = len(out) + len(prefix)
        n = rnd.randint(1_000, 40_000)
        if length and start >= at:
            n, length = length, 0
        # Neither the value's last byte nor the syntax up to the next value may be one of `crs`.
        while any(b in crs for b in range(start + n - 1, start + n + 64)):
            n += 1
        value = bytearray(rnd.randbytes(n).translate(FILLER))
        for b in sorted(c for c in crs if start <= c < start + n - 1):
            value[b - start:b - start + 2] = b"\r\n"
        out += prefix + value + b'"\r\n'
        row += 1
    path.write_bytes(out)


@pytest.mark.parametrize(("block", "long_cell"), [
    (1 << 20, (0, 0)),  # the first block size: every file is read with it first
    (2 << 20, (2 << 20, 3_000_000)),  # a 3 MB value after 2 MiB: the scan starts again with 2 MiB
    (4 << 20, (4 << 20, 6_000_000)),  # a 6 MB value after 4 MiB: again with 4 MiB
])
def test_a_quoted_crlf_on_every_block_boundary_is_read_whole(tmp_path: Path, long_csv_fields: None,
                                                             block: int, long_cell: tuple[int, int]) -> None:
    # Two kinds of "\r\n": with the "\r" on the last byte of every STEP (where pyarrow cuts any block
    # size, as in a user's file with one on every 64 KiB), and on k*block - k for every k (where the
    # k-th read of `block` bytes ends when each read before it ended one byte short, before its "\r\n":
    # so every read does).
    size = long_cell[0] + long_cell[1] + 5_000_000
    held = {k * block - k for k in range(1, size // block + 2)}
    steps = {k * STEP - 1 for k in range(1, size // STEP + 2)} - {h + d for h in held for d in (-1, 0, 1)}
    path = tmp_path / "in.csv"
    crlf_at(path, size, held | steps, long_cell, seed=block)
    data = path.read_bytes()
    assert all(data[c:c + 2] == b"\r\n" for c in held | steps if c < len(data) - 64)
    src = Source(path, "csv", spool_in=tmp_path)
    assert src._block == block
    want = [record[1] for record in by_csv_module(path)[1:]]
    got = [v for chunk in src.chunks() for v in chunk.column("text").to_pylist()]
    assert len(got) == len(want) and src.num_rows == len(want)
    changed = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert changed == []


@pytest.mark.parametrize("where", ["header", "first row"])
def test_a_first_row_of_3_mb_is_read(tmp_path: Path, long_csv_fields: None, where: str) -> None:
    # pyarrow reads the column names from its whole first block: it grows until the first row fits.
    big = "x" * 1_500_000 + "\r\n" + "y" * 1_500_000
    header, first = ("id,big", f'1,"{big}"') if where == "first row" else (f'id,"{big}"', "1,2")
    path = tmp_path / "in.csv"
    path.write_bytes(f"{header}\r\n{first}\r\n2,\"a\r\nb\"\r\n".encode())
    src = Source(path, "csv", spool_in=tmp_path)
    records = by_csv_module(path)
    assert src.columns == records[0]
    assert [list(r.values()) for r in rows(src)] == records[1:]


def test_a_blank_csv_is_still_an_input_error(tmp_path: Path) -> None:
    for data in (b"\n\n", b"\r\n" * 10):
        with pytest.raises(InputError, match="cannot infer number of columns"):
            Source(write(tmp_path / "in.csv", data), "csv")


def test_the_stream_never_cuts_a_crlf_and_loses_no_byte(tmp_path: Path) -> None:
    rnd = random.Random(5)
    for case in range(300):
        data = bytes(rnd.choices(b"a\r\n", k=rnd.randint(0, 200)))
        path = write(tmp_path / f"{case}.bin", data)
        reads: list[bytes] = []
        with csvfile.CrSafeStream(path) as stream:
            while chunk := stream.read(rnd.randint(2, 9)):
                reads.append(chunk)
            assert stream.read(5) == b""
        assert b"".join(reads) == data, case
        assert not any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in itertools.pairwise(reads)), case


FUZZ_PIECES = ["a", "xyz", " ", ",", '"', '""', "\r", "\n", "\r\n", "\n\r", "\u00e9", "\u2713", "\U0001f600",
               "NA", "null", "\t", ";"]
NAME_TAILS = ["", " \u2713", ",x", "a\r\nb", 'q"']


def fuzz_value(rnd: random.Random) -> str | None:
    if rnd.random() < 0.1:
        return None
    pieces = rnd.choices(FUZZ_PIECES, k=rnd.randint(0, 8))
    if rnd.random() < 0.1:
        pieces.insert(rnd.randint(0, len(pieces)), "w" * rnd.randint(50, 3_000))
    return "".join(pieces)


def fuzz_cell(rnd: random.Random, value: str | None) -> str:
    if value is None:
        return ""  # unquoted empty: null
    if value == "" or any(c in value for c in ',"\r\n') or rnd.random() < 0.3:
        return '"' + value.replace('"', '""') + '"'
    return value


def test_csv_fuzz_against_pythons_csv_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Random tables (quotes, CR, LF, CR LF, commas, unicode, empty, null; LF, CR LF or CR line ends)
    # read with a random first block (2 to 400 bytes), so that blocks end everywhere, on a "\r" above all.
    for seed in range(150):
        rnd = random.Random(seed)
        ncols = rnd.randint(2, 4)
        names = [f"c{i}{rnd.choice(NAME_TAILS)}" for i in range(ncols)]
        table = [[fuzz_value(rnd) for _ in range(ncols)] for _ in range(rnd.randint(0, 25))]
        ends = [rnd.choice(["\n", "\r\n", "\r"]) for _ in range(len(table) + 1)]
        header: list[str | None] = list(names)
        lines = [",".join(fuzz_cell(rnd, v) for v in row) for row in [header, *table]]
        text = "".join(line + end for line, end in zip(lines, ends, strict=True))
        if table and rnd.random() < 0.3:  # (pyarrow refuses a header alone without its line end)
            text = text[:-len(ends[-1])]  # no line end after the last row
        path = write(tmp_path / f"fuzz{seed}.csv", text)
        blank = [["" if v is None else v for v in row] for row in table]
        assert by_csv_module(path) == [names, *blank], seed  # the file says what was meant
        block = rnd.randint(2, 400)
        monkeypatch.setattr(csvfile, "FIRST_BLOCK", block)
        src = Source(path, "csv", spool_in=tmp_path)
        assert (src.columns, src.num_rows) == (names, len(table)), (seed, block)
        assert [list(r.values()) for r in rows(src)] == table, (seed, block)
        src.close()


def test_every_door_keeps_a_crlf_cut_by_a_block_boundary(tmp_path: Path, simulator: tuple[str, Simulator],
                                                         write_job: Callable[..., Path],
                                                         run_batch: RunBatch,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A 2.5 MB CSV with a quoted "\r\n" on every 64 KiB step and on each 1 MiB read's end: the command
    # line with the file and with a folder of it (a partitioned input), and the Python door with its
    # path. The output's input column equals the input, and the answer (the simulator's echo of the
    # prompt) shows the prompt that was sent held the value whole.
    url, _ = simulator
    held = {k * (1 << 20) - k for k in (1, 2)}
    crs = held | {k * STEP - 1 for k in range(1, 36)} - {h + d for h in held for d in (-1, 0, 1)}
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "part.csv"
    crlf_at(path, 2_500_000, crs, seed=7, names="id,name,experience", before="{0},person {0},".format)
    data = path.read_bytes()
    assert all(data[c:c + 2] == b"\r\n" for c in crs)
    want = [dict(zip(("id", "name", "experience"), r, strict=True)) for r in by_csv_module(path)[1:]]

    def answer(row: dict[str, Any]) -> str:
        return f"[{MODEL}] Rewrite for {row['name']}:\n{row['experience']}"

    def check(out: list[dict[str, Any]]) -> None:
        assert len(out) == len(want)
        assert [{k: o[k] for k in ("id", "name", "experience")} for o in out] == want
        assert [o["text"] for o in out] == [answer(w) for w in want]

    proc = run_batch(write_job("in/part.csv", api={"base-url": url}), timeout=120)
    assert proc.returncode == 0, proc.stderr
    check(pq.read_table(tmp_path / "out.parquet").to_pylist())
    proc = run_batch(write_job("in", name="dataset.toml", api={"base-url": url}, output={"path": "parts"}),
                     timeout=120)
    assert proc.returncode == 0, proc.stderr
    check(pq.read_table(tmp_path / "parts").to_pylist())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_csv_door_0123456789")
    frame = batch.run(str(path), model=MODEL, prompt="Rewrite for ${name}:\n${experience}", base_url=url,
                      progress=False, requests_per_minute=6_000_000, tokens_per_minute=1_000_000_000)
    check(frame.to_dict("records"))
