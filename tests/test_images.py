"""[task] image-dir: image file paths read from inside one folder, and never from outside it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import BackgroundLoop, LocalServer, completion

from batch.errors import ConfigError
from batch.job.config import parse_job
from batch.render import messages
from batch.render.messages import RowProblem, image_part, images

RunBatch = Callable[..., subprocess.CompletedProcess[str]]
WriteJob = Callable[..., Path]

PNG = b"\x89PNG\r\n\x1a\n" + b"inside-image-bytes" * 4
SECRET = b"\x89PNG\r\n\x1a\n" + b"OUTSIDE-SECRET-BYTES" * 4  # an image, so only containment stops it


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path/images/{a.png, sub/b.jpg, out.png -> ../secret.png}, tmp_path/secret.png."""
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "a.png").write_bytes(PNG)
    (tmp_path / "images" / "sub" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"jpeg" * 8)
    (tmp_path / "secret.png").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.png", tmp_path / "images" / "out.png")
    return tmp_path


def url_of(part: dict[str, Any]) -> str:
    return str(part["image_url"]["url"])


def test_a_relative_path_is_inlined_with_its_media_type(tree: Path) -> None:
    root = str(tree / "images")
    assert url_of(image_part("a.png", root)) == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert url_of(image_part("sub/b.jpg", root)).startswith("data:image/jpeg;base64,")
    assert url_of(image_part("sub/../a.png", root)).startswith("data:image/png;base64,")  # stays inside
    assert url_of(image_part("https://x.test/a.png", root)) == "https://x.test/a.png"


@pytest.mark.parametrize(("name", "fragment"), [
    ("../secret.png", "outside image-dir"),
    ("sub/../../secret.png", "outside image-dir"),
    ("out.png", "outside image-dir"),  # a symlink pointing out
    ("ABSOLUTE", "absolute"),
    (".", "outside image-dir"),
])
def test_a_path_out_of_the_folder_is_refused_without_opening(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                                              name: str, fragment: str) -> None:
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kw: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", spy)  # the os module messages uses
    name = str(tree / "secret.png") if name == "ABSOLUTE" else name
    with pytest.raises(RowProblem) as info:
        image_part(name, str(tree / "images"))
    assert fragment in str(info.value)
    assert opened == [], "a refused path was opened"


def test_missing_and_non_image_files_fail_the_row(tree: Path) -> None:
    (tree / "images" / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(RowProblem, match="not in image-dir"):
        image_part("nope.png", str(tree / "images"))
    with pytest.raises(RowProblem, match="not a PNG"):
        image_part("notes.txt", str(tree / "images"))


def test_without_image_dir_a_path_says_to_set_it() -> None:
    with pytest.raises(RowProblem, match=r"set \[task\] image-dir"):
        image_part("photos/a.png")


def test_the_five_image_limit_counts_files(tree: Path) -> None:
    with pytest.raises(RowProblem, match="at most 5"):
        images(["a.png"] * 6, "photo", str(tree / "images"))


def test_a_file_over_the_inline_limit_is_refused(tree: Path) -> None:
    (tree / "images" / "big.png").write_bytes(PNG + b"\0" * messages.MAX_BASE64_BYTES)
    with pytest.raises(RowProblem, match="4 MB"):
        image_part("big.png", str(tree / "images"))


def test_image_dir_is_relative_to_the_job_and_must_exist(tree: Path) -> None:
    head = '[input]\npath = "in.csv"\n[task]\nmodel = "openai/gpt-oss-20b"\nprompt = "${x}"\n'
    job = parse_job(head + 'image-dir = "images"\n', tree / "job.toml")
    assert job.task.image_dir == tree / "images"
    with pytest.raises(ConfigError, match=r"\[task\] image-dir: .* is not a folder"):
        parse_job(head + 'image-dir = "nowhere"\n', tree / "job.toml")


class Capture(LocalServer):
    """A chat server at /v1 that keeps every raw request body."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        super().__init__(client_max_size=32 * 1024 * 1024)

    async def chat(self, request: web.Request) -> web.Response:
        self.raw.append(await request.read())
        return completion("seen")


def test_a_run_reads_inside_files_and_refuses_the_rest_per_row(
        tree: Path, background_loop: BackgroundLoop, write_job: WriteJob, run_batch: RunBatch) -> None:
    server = Capture()
    url = background_loop.run(server.start())
    photos = ["a.png", "../secret.png", str(tree / "secret.png"), "out.png", "sub/b.jpg"]
    lines = ["id,name,experience,photo"] + [f"{i},n{i},e{i},{json.dumps(p)}" for i, p in enumerate(photos)]
    (tree / "in.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = write_job("in.csv", task={"prompt": "${experience}", "prompt-images": "photo",
                                    "image-dir": "images"})
    try:
        proc = run_batch(job, "--base-url", url)
    finally:
        background_loop.run(server.runner.cleanup())
    assert proc.returncode == 1, proc.stderr
    out = pq.read_table(tree / "out.parquet").to_pylist()
    assert [o["error"] is None for o in out] == [True, False, False, False, True]
    assert "outside image-dir" in out[1]["error"] and "absolute" in out[2]["error"]
    assert "outside image-dir" in out[3]["error"]
    assert len(server.raw) == 2
    secret_b64 = base64.b64encode(SECRET)[8:40]
    assert all(secret_b64 not in raw and b"OUTSIDE-SECRET" not in raw for raw in server.raw)
    inside = json.loads(server.raw[0])["messages"][-1]["content"][0]["image_url"]["url"]
    assert inside.startswith("data:image/")
