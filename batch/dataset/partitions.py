"""Partitioned inputs and outputs: a folder, a glob or a URL of Parquet/CSV/JSONL files in, a folder of
Parquet parts out (one per input partition, in partition order), local or remote.

    [input] path ─► partitions (sorted) ─► each fetched to a local file ─► the engine ─► staged part
                                                                                         │ publish
    [output] path/part-00000.parquet, part-00001.parquet, ...  (+ <output>.report.json)  ◄┘

Remote locations (`s3://`, `gs://`, `https://`, ...) go through fsspec, which this module alone
imports (lazily: a local run needs none of it). Credentials and endpoints come from the standard
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...): s3fs reads them, whereas pyarrow's own
S3FileSystem ignores AWS_ENDPOINT_URL, so it is never used here. A part is published atomically:
renamed into place on a local disk; one PUT on an object store, which readers see whole or not at all.

Waits on an S3 store are bounded: s3fs's defaults (a 15 s read timeout, botocore's retries inside
s3fs's own five attempts) let an endpoint that accepts and never answers hold a run for minutes. Here
each request has a connect and a read timeout (`BATCH_STORAGE_CONNECT_TIMEOUT`, `..._READ_TIMEOUT`,
in seconds, on the client and on every worker) and is tried `ATTEMPTS` times, so a dead store fails
the run (exit 2) within about ATTEMPTS x (connect + read) seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.errors import InputError, JobError

# What a dataset's locations are is the job's business (job.paths); named here too, for this wing's users.
from batch.job.paths import Layout as Layout
from batch.job.paths import is_partitioned as is_partitioned
from batch.job.paths import is_remote as is_remote
from batch.job.paths import layout as layout

EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}

CONNECT_ENV, READ_ENV = "BATCH_STORAGE_CONNECT_TIMEOUT", "BATCH_STORAGE_READ_TIMEOUT"
CONNECT_S, READ_S = 10.0, 30.0  # the defaults: a store that answers at all answers well within these
ATTEMPTS = 2  # a request is tried twice: one blip is survived, a dead store fails fast


@dataclass(frozen=True)
class Partition:
    index: int
    location: str  # absolute local path or URL
    format: str
    version: str  # size and modification time (or ETag): a changed file is a new partition

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"


def _fs(location: str) -> tuple[Any, str]:
    try:
        import fsspec  # type: ignore[import-untyped]
    except ImportError:
        raise InputError(f"{location}: remote inputs and outputs need fsspec; "
                         'pip install "batch[dask]"') from None
    s3 = location.split("://", 1)[0] in ("s3", "s3a")
    connect, read = timeouts()
    options = {"config_kwargs": {"connect_timeout": connect, "read_timeout": read,
                                 "retries": {"max_attempts": ATTEMPTS, "mode": "standard"}}} if s3 else {}
    try:
        fs, path = fsspec.core.url_to_fs(location, **options)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{location}: no filesystem for this URL ({exc}); for s3:// install s3fs "
                         '(pip install "batch[dask]")') from exc
    if s3:
        fs.retries = 1  # botocore retries (above); s3fs's own loop around it would multiply the wait
    return fs, path


def timeouts() -> tuple[float, float]:
    """The object store's connect and read timeouts, in seconds (from the environment, else defaults)."""
    found = []
    for name, default in ((CONNECT_ENV, CONNECT_S), (READ_ENV, READ_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise JobError(f"{name}: must be a number of seconds above 0, got {text!r}")
        found.append(value)
    return found[0], found[1]


def trouble(exc: BaseException) -> str:
    """An object store's error, for a message; a timeout says which settings bound the wait."""
    text = f"{type(exc).__name__}: {exc}"
    # botocore's Connect/ReadTimeoutError and aiohttp's timeouts share no base class with TimeoutError.
    if isinstance(exc, TimeoutError) or any("Timeout" in k.__name__ for k in type(exc).__mro__):
        connect, read = timeouts()
        text += (f" — the object store did not answer in time (connect timeout {connect:g} s, read timeout "
                 f"{read:g} s, {ATTEMPTS} attempts; {CONNECT_ENV} and {READ_ENV} set them)")
    return text


def list_partitions(location: str, fmt: str | None) -> list[Partition]:
    """The dataset's files, sorted by path (their order is the output's); never empty."""
    found: list[tuple[str, str]] = []  # (location, version)
    if is_remote(location):
        fs, path = _fs(location)
        try:
            infos = fs.glob(path, detail=True) if any(c in path for c in "*?[") else \
                fs.find(path, detail=True)
        except Exception as exc:  # fsspec's backends raise their own kinds (botocore: no credentials)
            raise InputError(f"[input] path: cannot list {location}: {trouble(exc)}; check the bucket and "
                             "prefix, and the credentials in the environment (AWS_ACCESS_KEY_ID, "
                             "AWS_ENDPOINT_URL, ...)") from None
        for p, info in sorted(infos.items()):
            if info.get("type", "file") == "file":
                url = fs.unstrip_protocol(p)
                found.append((url, f"{info.get('size')}:{info.get('ETag') or info.get('mtime') or ''}"))
    else:
        paths = sorted(glob.glob(location)) if any(c in location for c in "*?[") else \
            sorted(str(p) for p in Path(location).rglob("*"))
        for p in paths:
            if os.path.isfile(p):
                st = os.stat(p)
                found.append((p, f"{st.st_size}:{st.st_mtime_ns}"))
    parts: list[Partition] = []
    for loc, version in found:
        name = loc.rsplit("/", 1)[-1]
        kind = fmt or EXTENSIONS.get(os.path.splitext(name)[1].lower())
        if name.startswith((".", "_")) or kind is None:  # hidden, _SUCCESS, a report, ...: not data
            continue
        parts.append(Partition(len(parts), loc, kind, version))
    if not parts:
        raise InputError(f"[input] path: no .parquet, .csv or .jsonl files in {location}; check the path "
                         "(a folder, a glob such as data/*.csv, or a URL such as s3://bucket/prefix/)")
    return parts


def fetch(part: Partition, cache: Path) -> Path:
    """A local file with the partition's bytes: the file itself, or a download kept in `cache`."""
    if not is_remote(part.location):
        return Path(part.location)
    ext = os.path.splitext(part.location)[1] or f".{part.format}"
    local = cache / f"in-{part.index:05d}{ext}"
    stamp = local.with_name(local.name + ".version")
    if local.exists() and stamp.exists() and stamp.read_text() == part.version:
        return local
    cache.mkdir(parents=True, exist_ok=True)
    fs, path = _fs(part.location)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    try:
        fs.get(path, str(tmp))
    except Exception as exc:  # as in list_partitions: the backend's own kinds, timeouts among them
        raise InputError(f"cannot read {part.location}: {trouble(exc)}") from None
    os.replace(tmp, local)
    stamp.write_text(part.version)
    return local


def publish(file: Path, output: str, name: str) -> None:
    """Copy a finished file to `output/name`, atomically."""
    if is_remote(output):
        fs, path = _fs(output)
        fs.put(str(file), f"{path}/{name}")  # one PUT: the object appears whole or not at all
        return
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"  # hidden: readers of the folder never see it
    shutil.copyfile(file, tmp)
    os.replace(tmp, folder / name)


def check_output(output: str) -> None:
    """Refuse, before anything is sent, a remote output whose bucket is missing (a local folder is
    created as needed)."""
    if is_remote(output):
        fs, path = _fs(output)
        bucket = path.split("/", 1)[0]
        try:
            there = fs.exists(bucket)
        except Exception as exc:  # as in list_partitions: the backend's own kinds
            raise InputError(f"[output] path: cannot reach {output}: {trouble(exc)}") from None
        if not there:
            raise InputError(f"[output] path: the bucket of {output} does not exist; create it, or fix "
                             "the path")


def published(output: str, name: str) -> bool:
    if is_remote(output):
        fs, path = _fs(output)
        try:
            return bool(fs.exists(f"{path}/{name}"))
        except Exception as exc:  # as in list_partitions
            raise InputError(f"[output] path: cannot reach {output}: {trouble(exc)}") from None
    return (Path(output) / name).is_file()


def beside(output: str, suffix: str) -> str:
    """A location next to the output folder: `<output><suffix>`."""
    return output.rstrip("/") + suffix


def write_text(location: str, text: str) -> None:
    """Write a small text file (a report) locally or remotely, replacing it whole."""
    if is_remote(location):
        fs, path = _fs(location)
        fs.pipe_file(path, text.encode("utf-8"))
        return
    tmp = Path(location + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(location)
