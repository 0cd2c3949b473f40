"""The simulator's models and answers: what it serves, what it says, and what that costs in tokens.

This module owns the model catalogue (:data:`KNOWN_MODELS` with their context windows and completion
caps, :data:`DECOMMISSIONED` with their replacements, the ``GET /models`` object) and the answer to a
valid request: the model and size checks that come after the schema (decommissioned 400, unknown 404,
cap and context window), the tokenizer (:func:`count_tokens`, :func:`count_prompt_tokens`), the text
(:func:`sim_answer` echoes the last user message; a JSON ``response_format`` gets
:func:`sim_json_answer`, an object that fits the schema's top level; a pack, several rows in one
request as :mod:`.packs` reads it, gets :func:`sim_pack_answer`, each item answered exactly as it would
be alone), its cut at the completion cap, Groq's usage block and the 200 body of a chat completion,
which the Batch API wraps in its output lines. Every answer is a pure function of its request (and of
the pack faults the caller drew for it), so a test can prove that each answer landed on its own row.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .packs import pack_text, read_pack
from .schema import HttpError, image_url, invalid


@dataclass(frozen=True)
class ServedModel:
    """What ``GET /models`` says about an active model."""

    owned_by: str
    created: int
    context_window: int = 131_072
    max_completion_tokens: int = 65_536


KNOWN_MODELS: Mapping[str, ServedModel] = {
    "openai/gpt-oss-20b": ServedModel("OpenAI", 1754407957),
    "openai/gpt-oss-120b": ServedModel("OpenAI", 1754408224),
    "openai/gpt-oss-safeguard-20b": ServedModel("OpenAI", 1761708789),
    "qwen/qwen3.8-27b": ServedModel("Alibaba Cloud", 1777000000),
}
_SMALL, _LARGE = "openai/gpt-oss-20b", "openai/gpt-oss-120b"
# Decommissioned id -> suggested replacement: small models to gpt-oss-20b, 70b and up to
# gpt-oss-120b, and the guard model to its successor, the safeguard model.
DECOMMISSIONED: Mapping[str, str] = {
    "llama-3.1-405b-reasoning": _LARGE, "llama-3.1-70b-versatile": _LARGE, "llama-3.3-70b-versatile": _LARGE,
    "llama3-groq-70b-8192-tool-use-preview": _LARGE, "llama3-70b-8192": _LARGE,
    "llama-3.1-8b-instant": _SMALL, "llama3-groq-8b-8192-tool-use-preview": _SMALL, "llama3-8b-8192": _SMALL,
    "mixtral-8x7b-32768": _SMALL, "gemma2-9b-it": _SMALL, "gemma-7b-it": _SMALL,
    "llama-guard-3-8b": "openai/gpt-oss-safeguard-20b",
}


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: about four UTF-8 bytes a token, never zero."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _message_text(message: dict[str, Any], markers: bool) -> str:
    out: list[str] = []
    for part in _parts(message.get("content")):
        if part.get("type") == "text":
            out.append(str(part.get("text", "")))
        elif part.get("type") == "image_url" and markers:
            out.append(f"<image:{len(image_url(part))} chars>")
    return "".join(out)


def sim_answer(body: dict[str, Any]) -> str:
    """The answer to a request: its model in brackets, then the text of the last user message."""
    messages = body.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(messages, list) else []
    return f"[{body.get('model')}] " + (_message_text(users[-1], markers=True) if users else "")


def _prompt_text(body: dict[str, Any]) -> str:
    return sim_answer(body).split("] ", 1)[1]


def _sample(json_type: str, prompt: str) -> Any:
    """A deterministic value of a JSON type, computed from the prompt."""
    values: dict[str, Any] = {"string": prompt, "integer": len(prompt), "number": len(prompt) / 4,
                              "boolean": len(prompt) % 2 == 0, "object": {}, "array": [], "null": None}
    return values.get(json_type, prompt)


def sim_json_answer(body: dict[str, Any]) -> str:
    """The answer when the request asks for JSON: an object that satisfies the schema's top level.

    For json_schema, every top-level property gets a value of its (first) type: strings are the last
    user message's text, integers its length, numbers a quarter of it, booleans whether it is even.
    For json_object (no schema), the object holds the model and the prompt.
    """
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    return json.dumps(_json_object(body.get("model"), _prompt_text(body), schema), ensure_ascii=False)


def _first_type(schema: Any) -> str | None:
    declared = schema.get("type") if isinstance(schema, dict) else None
    first = declared[0] if isinstance(declared, list) and declared else declared
    return first if isinstance(first, str) else None


def _json_object(model: Any, prompt: str, schema: Any) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return {"model": model, "prompt": prompt}
    return {name: _sample(_first_type(sub) or "string", prompt) for name, sub in props.items()}


def _item_answer(model: str, prompt: str, item_schema: Any) -> Any:
    """One pack item's answer: what a single request of that prompt would get (an object nested, not
    its JSON text); a scalar type other than a string gets its sample."""
    kind = _first_type(item_schema)
    if kind == "object" or (isinstance(item_schema, dict) and "properties" in item_schema):
        return _json_object(model, prompt, item_schema)
    if kind is None or kind == "string":
        return f"[{model}] {prompt}"
    return _sample(kind, prompt)


def sim_pack_answer(body: dict[str, Any], damage: Sequence[str | None] = ()) -> str | None:
    """The answer to a pack, before any cut: ``{"answers": [{"id", "answer"}, ...]}``, each item
    answered as it would be alone (the echo for a string ITEM, the object for an object ITEM), with the
    pack faults in `damage` (by item) done to it; None when the request is no pack."""
    pack = read_pack(body)
    if pack is None:
        return None
    model = str(body.get("model"))
    return pack_text(pack, [_item_answer(model, prompt, pack.item_schema) for _, prompt in pack.items],
                     damage)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens: text tokens + 4 per message + 85 per image part."""
    return sum(count_tokens(_message_text(m, markers=False)) + 4
               + 85 * sum(p.get("type") == "image_url" for p in _parts(m.get("content"))) for m in messages)


def size_up(body: dict[str, Any]) -> tuple[str, int | None, int, int]:
    """Check the model and the request's size; return model, completion cap, prompt and requested tokens."""
    model: str = body["model"]
    if model in DECOMMISSIONED:
        raise HttpError(400, f"The model `{model}` has been decommissioned and is no longer supported. "
                       "Please refer to https://console.groq.com/docs/deprecations for a recommendation on "
                       "which model to use instead.", code="model_decommissioned")
    info = KNOWN_MODELS.get(model)
    if info is None:
        raise HttpError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    cap_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    cap: int | None = body.get(cap_key)
    if cap is not None and cap > info.max_completion_tokens:
        raise invalid(cap_key, f"must be at most {info.max_completion_tokens} for this model")
    prompt = count_prompt_tokens(body["messages"])
    requested = prompt + (cap or 0)  # what the rate limits reserve until the real usage is known
    if requested > info.context_window:
        raise HttpError(400, f"This model's maximum context length is {info.context_window} tokens. However, "
                       f"you requested {requested} tokens ({prompt} in the messages, {cap or 0} in the "
                       "completion). Please reduce the length of the messages or completion.",
                       code="context_length_exceeded", param="messages")
    return model, cap, prompt, requested


def answer(body: dict[str, Any], cap: int | None, damage: Sequence[str | None] = ()) -> tuple[str, int, str]:
    """The answer's text, completion tokens and finish reason, cut short at the cap as Groq does; a
    pack's text is cut as a whole. `damage`: the pack faults drawn for a pack's items (see .packs)."""
    kind = (body.get("response_format") or {}).get("type")
    text = sim_pack_answer(body, damage)
    if text is None:
        text = sim_json_answer(body) if kind in ("json_object", "json_schema") else sim_answer(body)
    completion = count_tokens(text)
    if cap is None or completion <= cap:
        return text, completion, "stop"
    # Cut to the cap's worth of bytes; "ignore" drops a character split by the cut.
    return text.encode()[: 4 * cap].decode("utf-8", "ignore"), cap, "length"


def usage_block(model: str, prompt: int, completion: int, queue_time: float,
                elapsed: float) -> dict[str, Any]:
    """Groq's usage block; its times are seconds, consistent with the latency actually spent."""
    prompt_time = prompt / 50_000  # prefill is fast; the rest of the latency is decoding
    completion_time = max(elapsed - prompt_time, completion / 1000)
    usage: dict[str, Any] = {
        "queue_time": round(queue_time, 6), "prompt_tokens": prompt, "prompt_time": round(prompt_time, 6),
        "completion_tokens": completion, "completion_time": round(completion_time, 6),
        "total_tokens": prompt + completion, "total_time": round(prompt_time + completion_time, 6),
    }
    if model.startswith("openai/gpt-oss"):  # reasoning models report it; the double does not reason
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
    return usage


def chat_completion(model: str, text: str, finish: str, usage: dict[str, Any], request_id: str,
                    created: int) -> dict[str, Any]:
    """The 200 body of a chat completion; the Batch API wraps the very same body in its output lines."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
        "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": None, "finish_reason": finish}],
        "usage": usage, "system_fingerprint": "fp_sim", "x_groq": {"id": request_id},
        "service_tier": "on_demand",
    }


def model_object(model: str) -> dict[str, Any]:
    info = KNOWN_MODELS[model]
    return {"id": model, "object": "model", "created": info.created, "owned_by": info.owned_by,
            "active": True, "context_window": info.context_window, "public_apps": None,
            "max_completion_tokens": info.max_completion_tokens}
