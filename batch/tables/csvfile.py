r"""A CSV file read into Arrow record chunks with every value exactly as stored, whatever its size.

This module owns how pyarrow's streaming CSV reader is fed. pyarrow cuts its input into blocks, one
block per read of the input stream, and when a block ends with "\r" it drops a "\n" that starts the
next one, even inside a quoted value, where that "\n" is data (apache/arrow#51368): the value
silently loses a byte. No block size avoids that, so the reader is given `CrSafeStream` instead of the
path: a stream whose reads never end between a "\r" and the "\n" after it (the read ends before the
"\r", and the pair starts the next one), so no block that ends with "\r" is followed by one that
starts with "\n", and the reader has nothing to drop.

A row must fit in about one block (pyarrow refuses a row that spans more than two, and a header that
its first block does not hold whole), so the caller starts with `FIRST_BLOCK` and doubles the block
while `BlockTooSmall` is raised, up to `MAX_BLOCK`. The column names are read the same way, with no
size of their own: pyarrow parses its whole first block when it opens, so a header or first row of
any size is read with a block that has grown to hold it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from batch.errors import InputError

FIRST_BLOCK = 1 << 20  # bytes per block (bounds memory: pyarrow holds a few blocks ahead)
MAX_BLOCK = 1 << 30  # and the most a row may hold (an Arrow string array holds at most 2 GiB)
# pyarrow's words for a row longer than the block ("straddling object straddles two block boundaries"),
# and for a first block that holds no whole line: a header longer than the block, or a blank file.
_STRADDLES = "straddl"
_NO_LINE = "cannot infer number of columns"


class BlockTooSmall(InputError):
    """A row, or the header, did not fit in the block: a block twice as large may read it."""


class CrSafeStream:
    r"""The bytes of a file, in reads of the size asked for (fewer only at the end), save that a read
    that would end between a "\r" and a "\n" ends one byte short: no "\r\n" is cut between two reads."""

    def __init__(self, path: Path) -> None:
        # pa.input_stream opens the path as pyarrow itself would (a .gz or .bz2 name is decompressed).
        self._file = pa.input_stream(str(path))
        self._held = b""  # read from the file, not yet returned
        self._ended = False  # the file has no more bytes
        # pyarrow reads ahead on its own threads; a read racing `close` must see the end, not a closed file.
        self._lock = threading.Lock()
        self._closed = False
        self.first_read_ended = False  # the first read reached the end of the file: the file is one block
        self._reads = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            if self._closed:
                return b""
            if size < 0:
                data, self._held = self._held + self._fresh(-1), b""
                return data
            if size < 2:  # a 1-byte read of "\r" before "\n" could not be anything but cut
                raise ValueError(f"CrSafeStream reads at least 2 bytes at a time, not {size}")
            while True:
                want = size - len(self._held)  # the held bytes are at most 2: "\r\n"
                fresh = self._fresh(want) if want > 0 and not self._ended else b""
                self._ended = self._ended or (want > 0 and not fresh)
                data, self._held = self._held + fresh, b""
                if not data:
                    return b""
                if data[-1] == 0x0D and not self._ended:
                    # Only a "\n" next must not be cut off: look at the next byte (rarely: with lines of
                    # n bytes, about one read in n ends with "\r").
                    after = self._fresh(1)
                    self._ended = not after
                    if after == b"\n":
                        data, self._held = data[:-1], b"\r\n"
                    else:
                        self._held = after
                if data:  # else the read was a lone "\r" that a "\n" follows: read on (b"" is the end)
                    return data

    def _fresh(self, size: int) -> bytes:
        data: bytes = self._file.read(size) if size >= 0 else self._file.read()
        if self._reads == 0:
            self.first_read_ended = size < 0 or len(data) < size
        self._reads += 1
        return data

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()

    def __enter__(self) -> CrSafeStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def column_names(path: Path, block: int) -> list[str]:
    """The header's column names, read with `block`-byte blocks (BlockTooSmall when the first rows
    need more)."""
    with CrSafeStream(path) as stream:
        try:
            reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block),
                                    parse_options=_parse_options())
        except pa.ArrowInvalid as exc:
            raise _error(exc, f"cannot read {path} as csv", block, stream) from exc
        return list(reader.schema.names)


def batches(path: Path, names: list[str], block: int) -> Iterator[pa.RecordBatch]:
    """Every row, in order, every column as text: an unquoted empty cell is null and a quoted one ("")
    the empty string; nothing else is null. Malformed CSV is an InputError (BlockTooSmall if a row did
    not fit in `block` bytes)."""
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names},
                                   strings_can_be_null=True, null_values=[""],
                                   quoted_strings_can_be_null=False)
    with CrSafeStream(path) as stream:
        try:
            yield from pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block),
                                      parse_options=_parse_options(), convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise _error(exc, f"{path}: malformed CSV", block, stream) from exc


def _parse_options() -> pacsv.ParseOptions:
    return pacsv.ParseOptions(newlines_in_values=True)


def _error(exc: pa.ArrowInvalid, what: str, block: int, stream: CrSafeStream) -> InputError:
    """pyarrow's complaint as an InputError: BlockTooSmall when a larger block may read the file."""
    said = str(exc)
    # No whole line in a first block that was the whole file: the file is blank; a larger block
    # would hold nothing more.
    too_small = _STRADDLES in said or (_NO_LINE in said and not stream.first_read_ended)
    if not too_small:
        return InputError(f"{what}: {said}")
    if block < MAX_BLOCK:
        return BlockTooSmall(f"{what}: a row is longer than the {block}-byte block ({said})")
    return InputError(f"{what}: a row is longer than {MAX_BLOCK >> 20} MiB, the most one row may hold")
