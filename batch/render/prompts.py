"""Rows to chat requests: render the templates, build the exact body, fingerprint it.

A template is compiled once into literal text and column placeholders; a row's values are spliced
in once and never re-scanned, so a value holding `${x}` or `{braces}` reaches the model as written.
A null in a column the templates use fails that row (it is never sent as "None" or "nan").

The body is serialised here, once, with a fixed key order; the fingerprint is the SHA-256 of exactly
those bytes, so it changes when anything sent changes (model, messages, any parameter) and only then.
A chunk is rendered in `Group`s: a run of rows with each row's fingerprint (or why it failed) and
each request on demand. Plain-text rows render a whole chunk at once (`columnar`); rows with images
or a chat history one by one, in groups bounded in bytes, so a chunk of large images is never held
rendered whole.

Left out of it are what only the wire needs: `max_tokens` for servers that are not Groq (a copy of
`max_completion_tokens` under its older name, appended last) and the server's own spelling of the
response format (`spelling`); neither changes what is asked.

`top_k` is never sent: Groq has no such parameter and rejects requests that carry it. Groq's extras
(stop, reasoning, service tier, response format) follow the original parameters, so a job that sets
none of them keeps the fingerprints it had before they existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from batch.job.config import Job, TaskSpec
from batch.job.endpoint import sends_max_tokens, server_kind
from batch.job.template import Template
from batch.records import Request
from batch.render import messages, spelling
from batch.render.columnar import ColumnarRenderer
from batch.render.group import JSON, Group, Rendered, RowFailure, fingerprint, packed
from batch.render.messages import RowProblem

# Named here too: the renderer's users take a group's parts from the renderer's module.
__all__ = ["JSON", "Group", "Rendered", "Renderer", "RowFailure", "as_text", "fingerprint", "renderer_for"]

# Completion budget assumed for pacing when the job sets no max-new-tokens.
DEFAULT_COMPLETION_BUDGET = 1024
# Tokens assumed per image for pacing (Groq does not publish a formula; this errs high).
IMAGE_TOKENS = 1024


# A group of rows rendered one by one ends at this many bytes of request bodies or this many rows,
# whichever comes first: what pass 1 holds rendered besides the requests in flight.
GROUP_BYTES = 8 << 20
GROUP_ROWS = 1024


def as_text(value: Any) -> str:
    """A cell as prompt text: strings unchanged, numbers as written, nested values as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class Renderer:
    """Turns record chunks into requests for one task."""

    def __init__(self, task: TaskSpec, *, key: str | None = None, max_tokens: bool = False,
                 server: str | None = None) -> None:
        self.model = task.model
        self.key = key  # a column that names a row in messages
        self.prompt = Template(task.prompt)
        self.system = Template(task.system_message) if task.system_message else None
        # Template columns must hold a value; history and image columns may be null (none).
        self.template_columns = list(dict.fromkeys(
            self.prompt.columns + (self.system.columns if self.system else [])))
        self.history_column, self.images_column = task.chat_history, task.prompt_images
        self.image_dir = str(task.image_dir) if task.image_dir is not None else None
        optional = [c for c in (self.history_column, self.images_column) if c]
        self.columns = list(dict.fromkeys(self.template_columns + optional + ([key] if key else [])))
        # Parameters in a fixed order; None means "not set" and is not sent. 0 is a value.
        params: dict[str, Any] = {
            "temperature": task.temperature,
            "top_p": task.top_p,
            "max_completion_tokens": task.max_new_tokens,
            "seed": task.seed,
            "user": task.user,
            # Groq's extras, after the original component's parameters: a job that sets none of them
            # sends (and fingerprints) exactly what it sent before they existed.
            "stop": list(task.stop) if isinstance(task.stop, tuple) else task.stop,
            "reasoning_effort": task.reasoning_effort,
            "reasoning_format": task.reasoning_format,
            "include_reasoning": task.include_reasoning,
            "service_tier": task.service_tier,
            "response_format": task.response_format,
        }
        self.params = {k: v for k, v in params.items() if v is not None}
        self.completion_budget = task.max_new_tokens or DEFAULT_COMPLETION_BUDGET
        # Rows of text alone go in packs of up to this many (`packs`); the others, one a request.
        self.rows_per_request = task.rows_per_request
        self.packs = task.rows_per_request > 1
        self.server = server
        self._columnar: ColumnarRenderer | bool | None = None  # False: row by row (made when first used)
        # The bytes sent are the fingerprinted body with its last `cut` bytes replaced by `alias`
        # (None: as it is): the budget again under its older name, for servers that know only that one
        # (`endpoint.sends_max_tokens`; never Groq), and the response format in the server's own
        # spelling (`spelling`). Both ask the same thing, so answers do not depend on the server.
        self.cut, self.alias = spelling.tail(self.params, server,
                                             task.max_new_tokens if max_tokens else None)

    def groups(self, chunk: pa.RecordBatch, first_row: int) -> Iterator[Group]:
        """The chunk's rows, rendered, in groups: plain-text rows all at once, others row by row in
        groups of at most `GROUP_BYTES` of bodies (plus one row) or `GROUP_ROWS` rows."""
        if self._columnar is None:
            self._columnar = ColumnarRenderer.for_renderer(self)
        group = self._columnar.render(chunk, first_row) if isinstance(self._columnar, ColumnarRenderer) \
            else None
        if group is not None:
            yield group
            return
        start, size, rendered = first_row, 0, []
        for r in self._rows(chunk, first_row):
            rendered.append(r)
            size += len(r.body) if isinstance(r, Request) else 0
            if size >= GROUP_BYTES or len(rendered) >= GROUP_ROWS:
                yield Group.of(start, rendered)
                start, size, rendered = r.row + 1, 0, []
        if rendered:
            yield Group.of(start, rendered)

    def render_chunk(self, chunk: pa.RecordBatch, first_row: int) -> list[Rendered]:
        """Every row of the chunk, rendered one by one (the reference the columnar path must equal)."""
        return list(self._rows(chunk, first_row))

    def _rows(self, chunk: pa.RecordBatch, first_row: int) -> Iterator[Rendered]:
        cols = {name: chunk.column(name).to_pylist() for name in self.columns}
        for i in range(chunk.num_rows):
            yield self.row(first_row + i, cols, i)

    def row(self, row: int, cols: dict[str, list[Any]], i: int) -> Rendered:
        """Row `i` of columns `cols` (input row `row`), as a request or the reason it cannot be one."""
        nulls = [name for name in self.template_columns if cols[name][i] is None]
        if nulls:
            return RowFailure(row, f"{self._where(row, cols, i)}: column {_names(nulls)} is empty "
                                   "(null); the prompt needs a value there")
        try:
            return self.request(row, {name: cols[name][i] for name in self.columns})
        except RowProblem as exc:
            return RowFailure(row, f"{self._where(row, cols, i)}: {exc}")

    def _where(self, row: int, cols: dict[str, list[Any]], i: int) -> str:
        """How an error names a row: built only for a row that fails (it is on every row's path)."""
        return f"input row {row + 1}" + (f" ({self.key} {cols[self.key][i]!r})" if self.key else "")

    def request(self, row: int, cells: dict[str, Any]) -> Request:
        """The request for one row; raises RowProblem when the row cannot become one."""
        values = {name: as_text(cells[name]) for name in self.template_columns}
        hist, imgs = self.history_column, self.images_column
        past = messages.history(cells[hist], hist) if hist else []
        pictures = messages.images(cells[imgs], imgs, self.image_dir) if imgs else []
        chat: list[dict[str, Any]] = []
        if self.system is not None and not past:  # the component's rule: a history replaces it
            chat.append({"role": "system", "content": self.system.render(values)})
        chat.extend(past)
        text = self.prompt.render(values)
        # Images go before the prompt text in the final user message.
        content = [*pictures, {"type": "text", "text": text}] if pictures else text
        chat.append({"role": "user", "content": content})
        count = inline = 0
        if pictures or past:  # only then can the request hold images: skip the scan on plain rows
            count = messages.count_images(chat)
            if count > messages.MAX_IMAGES:
                raise RowProblem(f"{count} images in one request (history and images together); Groq takes "
                                 f"at most {messages.MAX_IMAGES}")
            inline = messages.base64_bytes(chat)
        if inline > messages.MAX_BASE64_BYTES:
            raise RowProblem(f"{inline / 1e6:.1f} MB of inline images; Groq refuses more than 4 MB of base64 "
                             "per request (use https image URLs, or smaller images)")
        body = JSON.encode({"model": self.model, "messages": chat, **self.params}).encode()
        # Inline image bytes are not text tokens: leave them out of the estimate.
        est = estimate_prompt_tokens(len(body) - inline) + IMAGE_TOKENS * count
        fp = fingerprint(body)
        if self.packs and not (pictures or past):
            fp = packed(fp)
        if self.alias is not None:
            body = body[:-self.cut] + self.alias
        return Request(fingerprint=fp, body=body, row=row, est_tokens=est + self.completion_budget)


def renderer_for(job: Job, base_url: str | None = None, env: Mapping[str, str] | None = None, *,
                 server: str | None = None) -> Renderer:
    """The renderer of a job's requests as they go to `base_url` (a run's endpoint) or, without it, to
    the job's own base URL by the usual precedence over `env` (what `plan` shows). Where they go only
    decides the `max_tokens` copy (`endpoint.sends_max_tokens`) and the server's spelling of structured
    output (`server`, else what the job and the URL tell: `endpoint.server_kind`), never a fingerprint,
    so a caller that reads fingerprints or columns and sends nothing may leave them all out."""
    return Renderer(job.task, key=job.input.key, max_tokens=sends_max_tokens(job, base_url, env),
                    server=server or server_kind(job, base_url, env))


def estimate_prompt_tokens(body_bytes: int) -> int:
    """Prompt tokens, estimated as UTF-8 bytes of the whole body / 4 (rounded up).

    Counting the JSON around the text errs on the high side, which is the safe side for pacing:
    about 4 bytes a token for English, and a CJK character (3 bytes) is about one token.
    """
    return -(-body_bytes // 4)


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)
