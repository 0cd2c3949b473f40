"""Each server's spelling of the request fields that OpenAI-compatible servers spell differently.

Today that is structured output. Groq, OpenAI and vLLM take a schema as
`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`; llama.cpp's servers (its own
`llama-server` and llama-cpp-python's) take `{"type": "json_object", "schema": {...}}` and refuse
`json_schema` (llama-cpp-python 0.3.36 answers 500, "Input should be 'text' or 'json_object'").
`{"type": "json_object"}` alone is the same word everywhere.

The body that is fingerprinted is always Groq's spelling. A server that spells a field its own way
gets the field respelled after the fingerprint is taken, like the `max_tokens` copy: the request asks
the same thing in either spelling, so its answer is found in the store whichever server gave it, and
`plan` and `status`, which do not ask the server what it is, compute the same fingerprints as a run.
`response_format` is the body's last field (`prompts` keeps a fixed order), so respelling replaces
the body's tail: `tail` says how many bytes to cut and what to put in their place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batch.render.group import JSON

LLAMA_CPP = "llama.cpp"


def respelled(response_format: Mapping[str, Any] | None) -> bool:
    """Whether some server spells this response format differently from Groq (a json_schema one)."""
    return response_format is not None and response_format.get("type") == "json_schema"


def response_format_for(server: str | None, response_format: Mapping[str, Any] | None
                        ) -> Mapping[str, Any] | None:
    """`response_format` as `server` spells it; None (a server batch cannot name) takes Groq's."""
    if server != LLAMA_CPP or not respelled(response_format):
        return response_format
    assert response_format is not None
    spec = response_format.get("json_schema") or {}
    return {"type": "json_object", "schema": spec.get("schema") or {}}


def pinned_pack(item: Any, ids: Sequence[str]) -> bytes:
    """llama.cpp's response format for a pack (`render.packs`) of rows with these ids: exactly their
    items, the ids in order, which its grammar holds the model to (Groq's strict mode is not known to
    take `prefixItems`, `const` or item counts, so Groq gets the pack's schema as it is)."""
    one = [{"type": "object", "properties": {"id": {"const": i}, "answer": item},
            "required": ["id", "answer"], "additionalProperties": False} for i in ids]
    # No `items` beside `prefixItems`: llama.cpp's grammar would then ignore `prefixItems`.
    answers = {"type": "array", "minItems": len(one), "maxItems": len(one), "prefixItems": one}
    return JSON.encode({"type": "json_object", "schema": {
        "type": "object", "properties": {"answers": answers}, "required": ["answers"],
        "additionalProperties": False}}).encode()


def tail(params: Mapping[str, Any], server: str | None, max_tokens: int | None) -> tuple[int, bytes | None]:
    """How a fingerprinted body becomes the bytes sent to `server`: cut its last `cut` bytes and append
    the returned bytes; None: send it as it is. `max_tokens`: the budget's copy under its older name
    (`endpoint.sends_max_tokens`), appended last."""
    extra = b',"max_tokens":%d' % max_tokens if max_tokens else b""
    ours = params.get("response_format")
    theirs = response_format_for(server, ours)
    if theirs is ours:
        return 1, extra + b"}" if extra else None
    assert list(params)[-1] == "response_format", "the response format must be the body's last field"
    cut = len(b',"response_format":' + JSON.encode(ours).encode() + b"}")
    return cut, b',"response_format":' + JSON.encode(theirs).encode() + extra + b"}"
