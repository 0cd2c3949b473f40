"""Templates: `${column}` placeholders in a prompt or system message, and nothing else.

`${name}` is a placeholder (name non-empty, without `}`); `$$` is a literal `$`; any other `$` is
literal too, so "$5" needs no escaping; braces without a `$` are plain text, so JSON in a prompt
stays as written. A template is parsed once; a row's values are spliced in once and never
re-scanned, so a value holding `${x}` reaches the model as written. Imports nothing from batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placeholder:
    """A `${column}` in a template: replaced by that column's value in each row."""

    column: str


def parse_template(template: str) -> list[str | Placeholder]:
    """Split a template into literal text and placeholders (adjacent text merged, no empty strings).

    `${name}` is a placeholder (name non-empty, without `}`); `$$` is a literal `$`; any other `$` is
    literal too, so "$5" needs no escaping; braces without a `$` are plain text, so JSON in a prompt
    stays as written. Raises ValueError on an unterminated or empty placeholder.
    """
    parts: list[str | Placeholder] = []
    text, i = "", 0
    while (j := template.find("$", i)) != -1:
        text += template[i:j]
        nxt = template[j + 1 : j + 2]
        if nxt != "{":
            text, i = text + "$", j + (2 if nxt == "$" else 1)
            continue
        end = template.find("}", j + 2)
        name = template[j + 2 : end]
        where = f"line {template.count(chr(10), 0, j) + 1}, column {j - template.rfind(chr(10), 0, j)}"
        # "${a ${b}" is a forgotten brace, not a column named "a ${b": report the first "${".
        if end == -1 or "${" in name:
            raise ValueError(f"unterminated '${{' at {where} of the template; close it with '}}' "
                             "or write '$$' for a literal '$'")
        if not name:
            raise ValueError(f"empty placeholder '${{}}' at {where} of the template; "
                             "put a column name inside, e.g. ${text}")
        parts += [text, Placeholder(name)] if text else [Placeholder(name)]
        text, i = "", end + 1
    text += template[i:]
    return [*parts, text] if text else parts


def template_columns(template: str) -> list[str]:
    """The columns a template uses, in order of first use, without duplicates."""
    return list(dict.fromkeys(p.column for p in parse_template(template) if isinstance(p, Placeholder)))


class Template:
    """A parsed template, rendered once per row."""

    def __init__(self, text: str) -> None:
        self.parts = parse_template(text)
        self.columns = list(dict.fromkeys(p.column for p in self.parts if isinstance(p, Placeholder)))

    def render(self, values: dict[str, str]) -> str:
        return "".join(values[p.column] if isinstance(p, Placeholder) else p for p in self.parts)
