"""Before the first request: everything about a job that can make it fail, and where requests go.

A job that cannot succeed (a decommissioned model, a missing column, an output that cannot be
written, no key) fails here with exit 2, before anything is sent or paid for. For a real run, the
server's model list is asked once (`check_model`) before the first chat request: a model it does not
serve is exit 2, a refused key exit 4, and a server without /models (404) is simply not asked.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from batch.errors import ApiError, FatalApiError, InputError, JobError
from batch.job import catalog
from batch.job import schema as structured
from batch.job.config import Job, output_columns
from batch.render.prompts import renderer_for
from batch.send.client import Client
from batch.tables.source import Rows, Source

log = logging.getLogger("batch")

def check_job(job: Job, rows: Rows | None = None) -> Rows:
    """Everything about the job and its input that can be known before sending anything; the rows
    (the job's input file, opened and scanned, unless the door gives its own)."""
    gone = catalog.decommission_message(job.task.model)
    if gone:
        raise JobError(f"{job.file}: [task] model: {gone}")
    info = catalog.MODELS.get(job.task.model)
    if info and job.task.max_new_tokens and job.task.max_new_tokens > info.max_completion:
        raise JobError(f"{job.file}: [task] max-new-tokens: {job.task.model} writes at most "
                       f"{info.max_completion} tokens per answer, got {job.task.max_new_tokens}; lower it")
    if rows is None and job.input.dataset is not None:  # `run` checks each partition on its own
        raise InputError(f"{job.file}: [input] path: {job.input.dataset} is a partitioned dataset; this "
                         "command reads one file (python -m batch run reads a dataset)")
    if job.limits.max_cost_usd is not None and info is None:
        raise JobError(f"{job.file}: [limits] max-cost-usd: batch knows no price for {job.task.model!r}, "
                       "so it cannot keep a spend cap; remove the key (prices are known for "
                       f"{', '.join(catalog.MODELS)})")
    # A CSV file's parsed chunks are kept beside the state (or the output), not in a RAM-backed /tmp.
    near = next((d for d in (job.state.path.parent, job.output.path.parent) if d.is_dir()), None)
    source = rows if rows is not None else Source(job.input.path, job.input.format, spool_in=near)
    columns = source.columns
    renderer = renderer_for(job)
    absent = [c for c in renderer.columns if c not in columns]
    if absent:
        raise InputError(f"{job.file}: the job uses column(s) {', '.join(map(repr, absent))}, which "
                         f"{source.name} does not have; its columns are: {', '.join(map(repr, columns))}")
    clash = [c for c in output_columns(job) if c in columns]
    if clash:
        raise InputError(f"{source.name} already has column(s) {', '.join(map(repr, clash))}, which the "
                         "output would add; rename them in the input, or set [output] text-column "
                         "if the clash is the text column")
    shape = structured.shape_of(job.task.response_format)
    taken = {*columns, *output_columns(job)}
    clash = [c for c in (shape.columns if shape else ()) if c in taken]
    if clash:
        raise InputError(f"{job.file}: [task] response-format: the schema's propert(ies) "
                         f"{', '.join(map(repr, clash))} would become output columns, but the input or "
                         "the answer columns already have that name; rename the property (or the input "
                         "column, or [output] text-column)")
    if job.input.key is not None and job.input.key not in columns:
        raise InputError(f"{job.file}: [input] key: column {job.input.key!r} is not in {source.name}; "
                         f"its columns are: {', '.join(map(repr, columns))}")
    for what, path in (("[output] path", job.output.path), ("[state] path", job.state.path)):
        _check_writable(job, what, path)
    return source


async def check_model(job: Job, base_url: str, key: str | None) -> None:
    """Ask the server's model list once; refuse a model it does not serve before any chat request."""
    model = job.task.model
    try:
        async with Client(base_url, key, timeout_s=30, connections=1) as client:
            served = await client.models()
    except FatalApiError as exc:
        if exc.status != 404:
            raise  # 401/403: the key is refused; every chat request would be too (exit 4)
        log.info("models check skipped: %s has no /models endpoint (HTTP 404)", base_url)
        return
    except ApiError as exc:  # a flaky or odd models endpoint is no reason to stop a nightly run
        log.warning("models check skipped: GET %s/models failed: %s", base_url, exc)
        return
    ids = sorted(str(m.get("id")) for m in served if m.get("active", True) is not False)
    if model in ids:
        return
    gone = catalog.decommission_message(model)
    raise JobError(f"{job.file}: [task] model: " + (gone or (
        f"{model!r} is not served at {base_url}; available models: {', '.join(ids) or '(none)'}")))


def _check_writable(job: Job, what: str, path: Path) -> None:
    """Fail before sending if an answer could never be saved or written where the job says.

    `os.access` is not enough: root passes it everywhere, even in /proc, where no file can be made.
    So the nearest existing folder is asked for real: a file is created there and removed again.
    Names are checked against the file system's limit, with room for what batch adds beside the
    target (`.<name>.<pid>.tmp`, `-wal`, `.lock`, `.report.json`)."""
    def refuse(why: str) -> InputError:
        return InputError(f"{job.file}: {what}: cannot write {path}: {why}; choose a path in a folder "
                          "that exists (or can be created) and is writable")

    if path.is_dir():
        raise refuse("it is a folder")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor must let us create the rest
    if not folder.is_dir():
        raise refuse(f"{folder} is a file, not a folder")
    name_max = _name_max(folder)
    names = [*path.relative_to(folder).parts[:-1], f".{path.name}.{2**22}.tmp", f"{path.name}.report.json"]
    long = [n for n in names if len(n.encode()) > name_max]
    if long:
        raise refuse(f"the name {long[0]!r} is longer than the {name_max} bytes a name may have there")
    try:
        fd, probe = tempfile.mkstemp(prefix=".batch-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise refuse(f"no file can be created in {folder} ({exc.strerror or exc})") from None
    try:
        if path.exists():  # an existing file is replaced by rename, but a read-only one is a mistake
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise refuse(f"the existing file is not writable ({exc.strerror or exc})") from None


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
