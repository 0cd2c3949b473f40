"""A Dask DataFrame through a cluster run: the Python door's `batch.run(ddf, ...)` on Dask.

    ddf ─► staged on the cluster: `ddf.to_parquet(<root>/input)`, one Parquet part per Dask partition
        ─► the partitioned-input cluster run (`runner.ClusterRun`: one task per part, one limit and one
           spend cap for the whole cluster, a journal per part in <state>)
        ─► a Dask DataFrame over the output parts: the same partitions, in order, rows in order

Staging costs one write of the data as Parquet (by the workers, in parallel) and one read of it by the
tasks; the result is read lazily from the output parts. That write is what makes a Dask run resumable
and paid once: the staged folder is an ordinary partitioned input, so its parts, done markers and
journals behave exactly as a folder given on the command line. A folder staged whole (`_staged` marker)
is not written again by a call that stages the same data there.

The frame's index goes through as a column (`__batch_index__` when it has no name) and comes back as
the index. This module owns the client: the one in use (`distributed.default_client()`),
a scheduler address, or a LocalCluster of worker processes on 127.0.0.1 for the length of the call.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster, default_client

from batch.cluster.connect import LOCAL_CLUSTER, local_workers
from batch.errors import InputError

# An unnamed index is staged under this name: Dask's own (`__null_dask_index__`) is a column Dask's
# reader drops, so it could not be read back from the output.
NULL_INDEX = "__batch_index__"
STAGED = "_staged"  # a name partitions skip (leading underscore): the folder was written whole


def data_token(ddf: dd.DataFrame) -> str:
    """Dask's own deterministic name of the data: the same frame built again has the same token."""
    return str(dask.base.tokenize(ddf))


def index_name(ddf: dd.DataFrame) -> str:
    name = ddf.index.name
    return NULL_INDEX if name is None else str(name)


@contextlib.contextmanager
def cluster(address: str | None) -> Iterator[tuple[Client, str]]:
    """A client and the scheduler's address: `address`'s, else the client in use, else a LocalCluster of
    worker processes (one thread each) on 127.0.0.1, closed when the call ends."""
    if address is not None and not address.startswith("local"):
        with Client(address, set_as_default=False) as client:  # type: ignore[no-untyped-call]
            yield client, address
        return
    if address is None:
        try:
            client = default_client()  # type: ignore[no-untyped-call]
        except ValueError:  # no client in use: a cluster for this call
            pass
        else:
            yield client, str(client.scheduler.address)
            return
    n = local_workers(address) if address else None
    with LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n, **LOCAL_CLUSTER) as local, \
            Client(local, set_as_default=False) as client:  # type: ignore[no-untyped-call]
        yield client, str(local.scheduler_address)


def stage(ddf: dd.DataFrame, client: Client, folder: Path, token: str) -> None:
    """Each partition of `ddf` to `folder/part-NNNNN.parquet`, written by the cluster's workers; nothing
    to do when the folder was already staged whole with the same data (`token`)."""
    with contextlib.suppress(OSError):
        if (folder / STAGED).read_text(encoding="utf-8") == token:
            return
    if folder.exists():  # a staging cut short: written again from the start
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in ddf.columns]
    if len(set(names)) != len(names) or index_name(ddf) in names:
        raise InputError("data: the Dask DataFrame has duplicate column names (or a column named as its "
                         "index); the prompt names columns, so each needs its own name: rename them")
    try:
        written = ddf.rename_axis(index_name(ddf)).to_parquet(str(folder), write_index=True, compute=False,
                                 name_function=_part_name, write_metadata_file=False)
        client.compute(written).result()  # type: ignore[no-untyped-call]
    except Exception as exc:  # the frame's own computation failed, or a column has no Parquet type
        shutil.rmtree(folder, ignore_errors=True)
        raise InputError(f"data: staging the Dask DataFrame as Parquet failed ({type(exc).__name__}: "
                         f"{exc}); give each column one type Arrow can store, e.g. .astype(str)") from exc
    (folder / STAGED).write_text(token, encoding="utf-8")


def _part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"  # zero-padded, so that sorted by name is partition order


def _read_part(file: str, index: str, caller: pd.DataFrame) -> pd.DataFrame:
    return _shaped(pq.read_table(file), index, caller)


def _shaped(table: pa.Table, index: str, caller: pd.DataFrame) -> pd.DataFrame:
    """An output part as pandas: the caller's columns and index in the caller's dtypes (`caller`, the
    frame's empty meta), the answers' text as Arrow-backed strings and counts as nullable integers."""
    frame = table.to_pandas(types_mapper=_dtype).set_index(index)
    frame.index = frame.index.astype(caller.index.dtype)
    frame.index.name = caller.index.name
    shaped: pd.DataFrame = frame.astype({c: caller[c].dtype for c in caller.columns})
    return shaped


def _dtype(arrow_type: pa.DataType) -> Any:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype("pyarrow")
    return {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get(arrow_type)


def result(output: Path, ddf: dd.DataFrame, summary: dict[str, Any] | None) -> dd.DataFrame | None:
    """The output parts as one lazy Dask DataFrame over `ddf`'s columns and answers, a partition per
    part in order, the caller's index and dtypes restored; None when no part is written yet."""
    files = sorted(str(f) for f in output.glob("part-*.parquet"))
    if not files:
        return None
    # Read part by part, not with Dask's read_parquet: it sets or drops the index in place, which
    # pandas now warns about on every partition read.
    index, caller = index_name(ddf), ddf._meta  # the frame's empty pandas form: its dtypes, no compute
    meta = _shaped(pq.read_schema(files[0]).empty_table(), index, caller)
    frame: dd.DataFrame = dd.from_map(  # type: ignore[no-untyped-call]
        _read_part, files, index=index, caller=caller, meta=meta)
    if summary is not None:
        frame.attrs = {"batch": summary}
    return frame


__all__ = ["cluster", "data_token", "index_name", "result", "stage"]
