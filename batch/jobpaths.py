"""Where a job reads and writes: one input file and one output file, or a partitioned dataset (a folder,
glob or URL of files) and a folder of parts. `config` calls `resolve_paths` once the keys are valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batch.dataset import partitions

INPUT_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                    ".ndjson": "jsonl"}
OUTPUT_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def resolve_paths(label: str, job_file: Path, inp: dict[str, Any], out: dict[str, Any], st: dict[str, Any],
                  problems: list[str]
                  ) -> tuple[Path | None, str | None, Path | None, str | None, partitions.Layout | None]:
    """Input path and format, output path and format, and a dataset's layout (None: one file)."""
    if "path" not in inp or not partitions.is_partitioned(job_file.parent, inp["path"]):
        return (*_one_file(label, job_file, inp, out, problems), None)
    lay = partitions.layout(job_file, inp["path"], out.get("path"), st.get("path"))
    if (lay.output + "/").startswith(lay.input.rstrip("/") + "/"):
        problems.append(f"{label}: [output] path: is inside the input dataset; choose another folder")
    if partitions.is_remote(str(st.get("path") or "")):
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
