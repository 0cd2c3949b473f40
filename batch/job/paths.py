"""Where a job reads and writes: one input file and one output file, or a partitioned dataset (a folder,
glob or URL of files) and a folder of parts. `config` calls `resolve_paths` once the keys are valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                    ".ndjson": "jsonl"}
OUTPUT_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def resolve_paths(label: str, job_file: Path, inp: dict[str, Any], out: dict[str, Any], st: dict[str, Any],
                  problems: list[str]
                  ) -> tuple[Path | None, str | None, Path | None, str | None, Layout | None]:
    """Input path and format, output path and format, and a dataset's layout (None: one file)."""
    if "path" not in inp or not is_partitioned(job_file.parent, inp["path"]):
        return (*_one_file(label, job_file, inp, out, problems), None)
    lay = layout(job_file, inp["path"], out.get("path"), st.get("path"))
    if (lay.output + "/").startswith(lay.input.rstrip("/") + "/"):
        problems.append(f"{label}: [output] path: is inside the input dataset; choose another folder")
    if is_remote(str(st.get("path") or "")):
        problems.append(f"{label}: [state] path: must be a folder on a disk (SQLite journals), not a URL")
    return Path(lay.input), inp.get("format") or "", Path(lay.output), "parquet", lay


def _one_file(label: str, job_file: Path, inp: dict[str, Any], out: dict[str, Any],
              problems: list[str]) -> tuple[Path | None, str | None, Path | None, str | None]:
    """Input and output paths and formats of a one-file job (rather than a partitioned dataset)."""
    in_path = (job_file.parent / inp["path"]).resolve() if "path" in inp else None
    in_format: str | None = inp.get("format")
    if in_path and "format" in inp and not in_format:
        in_format = INPUT_EXTENSIONS.get(in_path.suffix.lower())
        if not in_format:
            problems.append(f"{label}: [input] format: cannot tell the format of {json.dumps(inp['path'])} "
                            'from its extension; set format = "csv", "parquet" or "jsonl"')
    out_path = (job_file.parent / out["path"]).resolve() if out.get("path") else None
    if in_path and "path" in out and out["path"] is None:  # not given (rather than given wrong)
        out_path = in_path.with_name(f"{in_path.stem}.enriched.parquet")
    out_format = OUTPUT_EXTENSIONS.get(out_path.suffix.lower()) if out_path else None
    if out_path and not out_format:
        problems.append(f"{label}: [output] path: must end in .parquet, .pq or .csv, "
                        f"got {json.dumps(out['path'])}")
    elif out_path and out_path == in_path:  # the sink reads the input while writing: never overwrite it
        problems.append(f"{label}: [output] path: is the input file; choose another path")
    return in_path, in_format, out_path, out_format


@dataclass(frozen=True)
class Layout:
    """Where a partitioned job reads, writes and journals (absolute local paths, or URLs)."""

    input: str
    output: str
    state: Path  # a local folder every worker reaches: one SQLite journal per partition


def is_remote(location: str) -> bool:
    return "://" in location


def is_partitioned(job_dir: Path, raw: str) -> bool:
    """Whether an [input] path names a dataset (folder, glob, URL) rather than one file."""
    return is_remote(raw) or any(c in raw for c in "*?[") or (job_dir / raw).is_dir()


def layout(job_file: Path, raw_in: str, raw_out: str | None, raw_state: str | None) -> Layout:
    """Resolve a partitioned job's locations; default output `<input>.enriched`, default state the
    output + `.state` (or beside the job file, when the output is remote)."""
    base = job_file.parent
    src = raw_in if is_remote(raw_in) else str((base / raw_in).resolve())
    root = src.rstrip("/")
    if any(c in root for c in "*?["):  # a glob: the output sits beside the folder it names
        root = root[:root.rfind("/", 0, min(root.find(c) for c in "*?[" if c in root))]
    out = (raw_out if is_remote(raw_out) else str((base / raw_out).resolve())) if raw_out else \
        root + ".enriched"
    out = out.rstrip("/")
    state = (base / raw_state).resolve() if raw_state else (
        base / f"{job_file.stem}.state" if is_remote(out) else Path(out + ".state"))
    return Layout(src, out, state)
