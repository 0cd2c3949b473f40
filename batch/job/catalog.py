"""What batch knows about Groq's models without asking: prices, base-tier limits, decommissions, and
which reasoning options each family takes.

Figures are Groq's published ones as of late 2026 (see docs/groq.md, "Models" and "Reasoning"). They
drive cost estimates, the default pacing when a job states no limits, the refusal to run a job whose
model is gone, and the refusal of a reasoning setting Groq would answer with a 400.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelInfo:
    usd_per_m_in: float  # USD per million input tokens
    usd_per_m_out: float  # USD per million output tokens
    rpm: int  # base-tier limits, per model
    tpm: int
    rpd: int
    tpd: int
    context_window: int = 131_072
    max_completion: int = 65_536


MODELS: dict[str, ModelInfo] = {
    "openai/gpt-oss-20b": ModelInfo(0.075, 0.30, 30, 8_000, 1_000, 200_000),
    "openai/gpt-oss-120b": ModelInfo(0.15, 0.60, 30, 8_000, 1_000, 200_000),
    "openai/gpt-oss-safeguard-20b": ModelInfo(0.075, 0.30, 30, 8_000, 1_000, 200_000),
    # Price uncertain (docs/groq.md); limits assumed equal to the other base-tier models.
    "qwen/qwen3.8-27b": ModelInfo(0.80, 4.00, 30, 8_000, 1_000, 200_000),
}

# Base-tier limits for a model batch does not know: the most common base tier.
DEFAULT_LIMITS = ModelInfo(0.0, 0.0, 30, 8_000, 1_000, 200_000)

# Decommissioned ids -> the current model to use instead (docs/groq.md, "Models").
DECOMMISSIONED: dict[str, str] = {
    "llama-3.1-405b-reasoning": "openai/gpt-oss-120b",
    "llama-3.1-70b-versatile": "openai/gpt-oss-120b",
    "llama-3.1-8b-instant": "openai/gpt-oss-20b",
    "llama3-groq-70b-8192-tool-use-preview": "openai/gpt-oss-120b",
    "llama3-groq-8b-8192-tool-use-preview": "openai/gpt-oss-20b",
    "llama3-70b-8192": "openai/gpt-oss-120b",
    "llama-guard-3-8b": "openai/gpt-oss-safeguard-20b",
    "llama3-8b-8192": "openai/gpt-oss-20b",
    "mixtral-8x7b-32768": "openai/gpt-oss-20b",
    "gemma2-9b-it": "openai/gpt-oss-20b",
    "gemma-7b-it": "openai/gpt-oss-20b",
    "llama-3.3-70b-versatile": "openai/gpt-oss-120b",
}


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Groq's reasoning options for a model: the `reasoning_effort` values it takes, and whether it takes
    `reasoning_format` (the gpt-oss models do not: they take `include_reasoning` only)."""

    efforts: tuple[str, ...]
    takes_format: bool


# By model id, else by the longest matching family prefix; models of no family here are not judged.
# Groq's reasoning page names gpt-oss-20b and -120b as refusing reasoning_format; the safeguard model
# is a gpt-oss too and is taken to be alike (the stricter reading).
REASONING: dict[str, Reasoning] = {
    "openai/gpt-oss": Reasoning(("low", "medium", "high"), takes_format=False),
    "qwen/qwen3.8-27b": Reasoning(("none", "default", "low", "medium", "high"), takes_format=True),
    "qwen/": Reasoning(("none", "default"), takes_format=True),
}


def reasoning_of(model: str) -> Reasoning | None:
    """The reasoning options `model` takes, if batch knows its family."""
    if model in REASONING:
        return REASONING[model]
    family = max((f for f in REASONING if model.startswith(f)), key=len, default=None)
    return REASONING[family] if family is not None else None


def limits_for(model: str) -> ModelInfo:
    return MODELS.get(model, DEFAULT_LIMITS)


def cost_usd(model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float | None:
    """Estimated cost; cached input tokens are billed at half price. None for an unknown model."""
    info = MODELS.get(model)
    if info is None:
        return None
    uncached = max(0, input_tokens - cached_tokens)
    return (uncached * info.usd_per_m_in + cached_tokens * info.usd_per_m_in / 2
            + output_tokens * info.usd_per_m_out) / 1e6


def decommission_message(model: str) -> str | None:
    """A user-facing refusal when `model` is decommissioned, else None."""
    replacement = DECOMMISSIONED.get(model)
    if replacement is None:
        return None
    return (f"model {model!r} has been decommissioned by Groq and no longer answers; "
            f"use {replacement!r} instead (set [task] model = \"{replacement}\")")


def usd(x: float) -> str:
    """Dollars as people read them: cents above a dollar, up to six decimals below (a cap of $0.005)."""
    return f"${x:,.2f}" if x >= 1 else f"${x:.6f}".rstrip("0").rstrip(".") if x else "$0"
