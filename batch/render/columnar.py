"""Rendering a chunk of plain-text rows at once, with Arrow compute: byte for byte the bodies (and so
the fingerprints) that `prompts.Renderer.request` builds row by row, about ten times faster.

A request body is fixed JSON around one or two strings (the system message and the prompt):

    {"model":"m","messages":[{"role":"system","content":"<S>"},{"role":"user","content":"<U>"}],...}

so the skeleton is encoded once, and each row only splices in its rendered, JSON-escaped texts. The
escaping is Python's (`ensure_ascii=False`): backslash, quote, newline, carriage return and tab are
replaced column-wide; the rare row holding another control character is rendered by the reference
path instead, as is a row with a null in a template column (it fails, with the reference message).

Only rows that are plain text take this path: a job with a chat history or images, or a template
column of a type whose text Python and Arrow could spell differently (floats, nested values), is
rendered row by row by `prompts`.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch.job.template import Placeholder, Template
from batch.records import Request
from batch.render.group import JSON, Group, RowRenderer, packed

_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_OTHER_CONTROL = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"  # escaped by json as \b, \f or \u00XX
_MARKS = ("\x01system", "\x01prompt")


def _plain(t: pa.DataType) -> bool:
    # Types whose Arrow text is exactly what prompts.as_text writes (floats are not: 1e16 vs 1e+16).
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_boolean(t))


class ColumnarRenderer:
    def __init__(self, renderer: RowRenderer) -> None:
        self._renderer = renderer
        templates = [("user", renderer.prompt, _MARKS[1])]
        if renderer.system is not None:
            templates.insert(0, ("system", renderer.system, _MARKS[0]))
        # The skeleton, with a mark where each template's text goes; a template without placeholders
        # is the same on every row, so it is part of the skeleton.
        chat = []
        self._templates: list[Template] = []
        for role, template, mark in templates:
            if template.columns:
                self._templates.append(template)
                chat.append({"role": role, "content": mark})
            else:
                chat.append({"role": role, "content": template.render({})})
        skeleton = JSON.encode({"model": renderer.model, "messages": chat, **renderer.params})
        # Arrow scalars, not str: handing pyarrow a str makes it check whether pandas is there.
        self._literals: list[pa.Scalar[Any]] = []
        for mark in _MARKS:
            encoded = JSON.encode(mark)[1:-1]
            if encoded in skeleton:
                before, skeleton = skeleton.split(encoded, 1)
                self._literals.append(pa.scalar(before, pa.string()))
        self._literals.append(pa.scalar(skeleton, pa.string()))

    @classmethod
    def for_renderer(cls, renderer: RowRenderer) -> ColumnarRenderer | bool:
        """The columnar path for this job, or False when its rows must go one by one."""
        if renderer.history_column or renderer.images_column or not renderer.template_columns:
            return False
        return cls(renderer)

    def render(self, chunk: pa.RecordBatch, first_row: int) -> Group | None:
        """The chunk as one group; None if a template column's type needs the row-by-row path."""
        renderer, n = self._renderer, chunk.num_rows
        columns: dict[str, pa.Array] = {}
        null: Any = None
        for name in renderer.template_columns:
            column = chunk.column(name)
            if not _plain(column.type):
                return None
            if not pa.types.is_string(column.type):
                column = pc.cast(column, pa.string())
            if column.null_count:
                null = pc.is_null(column) if null is None else pc.or_(null, pc.is_null(column))
                column = column.fill_null("")
            columns[name] = column
        pieces: list[Any] = []
        for literal, template in zip(self._literals, [*self._templates, None], strict=True):
            pieces.append(literal)
            if template is not None:
                pieces.append(_escape(_join(template, columns, n)))
        body = pc.binary_join_element_wise(*pieces, _empty())
        bodies: list[bytes] = pc.cast(body, pa.binary()).to_pylist()
        sha256 = hashlib.sha256
        fps: list[str | None] = [sha256(b).hexdigest()[:32] for b in bodies] if not renderer.packs \
            else [packed(sha256(b).hexdigest()[:32]) for b in bodies]  # each row here is text alone
        errors: list[str | None] = [None] * n
        # Rows the reference path renders: a null (the row fails) or an unusual control character.
        special: Any = null
        for piece in pieces:
            if isinstance(piece, pa.Array):
                odd = pc.match_substring_regex(piece, _OTHER_CONTROL)
                special = odd if special is None else pc.or_(special, odd)
        overrides: dict[int, Request] = {}
        for i in pc.indices_nonzero(special).to_pylist():
            cells = {c: [chunk.column(c)[i].as_py()] for c in renderer.columns}
            got = renderer.row(first_row + i, cells, 0)
            if isinstance(got, Request):
                overrides[i] = got
                fps[i] = got.fingerprint
            else:
                fps[i], errors[i] = None, got.error
        budget, alias, cut = renderer.completion_budget, renderer.alias, renderer.cut

        def request(i: int) -> Request:
            if i in overrides:
                return overrides[i]
            b = bodies[i]
            assert fps[i] is not None, "a failed row has no request"
            est = -(-len(b) // 4) + budget  # of the fingerprinted bytes, as one row's request counts
            return Request(fingerprint=fps[i] or "", body=b if alias is None else b[:-cut] + alias,
                           est_tokens=est, row=first_row + i)
        return Group(first_row, fps, errors, request)


def _join(template: Template, columns: dict[str, pa.Array], n: int) -> pa.Array:
    parts = [columns[p.column] if isinstance(p, Placeholder) else pa.scalar(p, pa.string())
             for p in template.parts]
    if len(parts) == 1:
        return parts[0]  # a template that is one placeholder (a literal alone is in the skeleton)
    return pc.binary_join_element_wise(*parts, _empty())


def _escape(text: pa.Array) -> pa.Array:
    for raw, escaped in _ESCAPES:
        text = pc.replace_substring(text, pattern=raw, replacement=escaped)
    return text


@functools.cache
def _empty() -> pa.Scalar[Any]:
    # Made on first use, not at import: a str handed to pyarrow makes it import pandas to check for
    # it, and the command line imports this module before it shuts pandas out (source.py).
    return pa.scalar("", pa.string())
