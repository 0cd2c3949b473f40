"""A row's chat history and images, from table cells to Groq's message schema.

History is a list of `{role, content}`: a Parquet list of structs, or JSON text in CSV/JSONL. Content
is a string or a list of parts (`{"type": "text", "text"}`, `{"type": "image_url",
"image_url": {"url"}}`). Images are one cell value or a list: https URLs, `data:image/...` URLs or raw
base64 (turned into a data URL with the media type its first bytes show), or — when the job sets an
image directory — a file path relative to it, read and inlined as a data URL. A path is resolved
(symlinks included) and must stay inside that directory; one that leads out is refused before the file
is opened, so a hostile table cannot make batch read, and send, a file it was not meant to. Groq's
vision limits are checked here, before sending: at most 5 images and 4 MB of base64 per request.

Everything wrong with one row raises `RowProblem`, which fails that row only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

MAX_IMAGES = 5
MAX_BASE64_BYTES = 4 * 1024 * 1024
ROLES = ("system", "user", "assistant")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"))


class RowProblem(Exception):
    """Why one row cannot become a request."""


def _drop_nulls(d: dict[str, Any]) -> dict[str, Any]:
    # A Parquet struct carries every field of its type; an absent one arrives as None.
    return {k: v for k, v in d.items() if v is not None}


def _from_json(value: Any, column: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError as exc:
            raise RowProblem(f"column {column!r} is not valid JSON ({exc})") from None
    return value


def history(value: Any, column: str) -> list[dict[str, Any]]:
    """The messages of a history cell; [] for null or empty."""
    value = _from_json(value, column)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowProblem(f"column {column!r} must be a list of {{role, content}} messages, "
                         f"got {type(value).__name__}")
    out = []
    for i, raw in enumerate(value, 1):
        where = f"column {column!r} message {i}"
        if not isinstance(raw, dict):
            raise RowProblem(f"{where} must be an object with role and content")
        m = _drop_nulls(raw)
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise RowProblem(f"{where} has unsupported field(s) {extra}; only role and content are sent")
        role = m.get("role")
        if role not in ROLES:
            raise RowProblem(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _content(m.get("content"), role, where)})
    return out


def _content(content: Any, role: str, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RowProblem(f"{where}: content must be a string or a non-empty list of parts")
    parts = []
    for raw in content:
        part = _drop_nulls(raw) if isinstance(raw, dict) else {}
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            if role != "user":
                raise RowProblem(f"{where}: only user messages may hold images (this one is {role})")
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            parts.append(image_part(url))
        else:
            raise RowProblem(f"{where}: a part must be {{type: text, text}} or {{type: image_url, "
                             f"image_url: {{url}}}}, got {json.dumps(raw, default=str)[:80]}")
    return parts


def images(value: Any, column: str, image_dir: str | None = None) -> list[dict[str, Any]]:
    """The image parts of an images cell; [] for null or empty. `image_dir`: where file paths point."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = _from_json(value, column)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    parts = [image_part(v, image_dir) for v in items if v not in (None, "")]
    if len(parts) > MAX_IMAGES:
        raise RowProblem(f"column {column!r} has {len(parts)} images; Groq takes at most {MAX_IMAGES} "
                         "per request")
    return parts


def _media_type(head: bytes) -> str | None:
    media = next((m for magic, m in _MAGIC if head.startswith(magic)), None)
    if media is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        media = "image/webp"
    return media


def image_part(value: Any, image_dir: str | None = None) -> dict[str, Any]:
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(f"an image must be a URL or base64 text, got {type(value).__name__}")
    v = value.strip()
    if v.startswith(("https://", "http://", "data:image/")):
        return {"type": "image_url", "image_url": {"url": v}}
    compact = "".join(v.split())
    try:
        media = _media_type(base64.b64decode(compact[:64], validate=True))
    except (binascii.Error, ValueError):
        media = None
    if media is not None:
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{compact}"}}
    if image_dir is not None:  # not an image in itself: a file name inside the image directory
        return read_image(value, image_dir)
    raise RowProblem(f"image {v[:40]!r} is neither an https URL, a data:image URL nor base64 PNG, JPEG, "
                     "GIF or WEBP data; if it is a file path, set [task] image-dir to the folder it is in")


def read_image(name: str, image_dir: str) -> dict[str, Any]:
    """The image file `name` inside `image_dir`, inlined as a data URL.

    Containment is decided on the fully resolved path (`..`, absolute paths and symlinks that lead out
    are all refused) before anything is opened; the final open does not follow a symlink, so a link
    swapped in after the check is refused too.
    """
    root = os.path.realpath(image_dir)
    try:
        if os.path.isabs(name):
            raise RowProblem(f"image path {name!r} is absolute; image paths are relative to image-dir {root}")
        target = os.path.realpath(os.path.join(root, name))
    except ValueError:  # an embedded NUL byte
        raise RowProblem(f"image path {name[:40]!r} is not a valid file name") from None
    if os.path.commonpath([root, target]) != root or target == root:
        raise RowProblem(f"image path {name!r} leads outside image-dir {root}; refused (not read)")
    limit = MAX_BASE64_BYTES * 3 // 4  # base64 grows data by a third
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise RowProblem(f"image file {name!r} is not in image-dir {root}") from None
    except OSError as exc:
        raise RowProblem(f"cannot read image file {name!r} in image-dir {root}: {exc.strerror}") from None
    if len(data) > limit:
        raise RowProblem(f"image file {name!r} is over {limit / 1e6:.1f} MB; Groq refuses more than 4 MB of "
                         "base64 per request")
    media = _media_type(data[:16])
    if media is None:
        raise RowProblem(f"image file {name!r} is not a PNG, JPEG, GIF or WEBP image")
    return {"type": "image_url",
            "image_url": {"url": f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"}}


def base64_bytes(messages: list[dict[str, Any]]) -> int:
    """Bytes of inline (data URL) images in a request: Groq refuses more than 4 MB."""
    total = 0
    for m in messages:
        if isinstance(m["content"], list):
            for p in m["content"]:
                url = p.get("image_url", {}).get("url", "") if p["type"] == "image_url" else ""
                total += len(url) if url.startswith("data:") else 0
    return total


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list)
               for p in m["content"] if p["type"] == "image_url")
