"""The Groq double: the same endpoints, headers, limits, errors and Batch API as Groq, on loopback.

It serves ``--simulate`` runs, the ``simulate`` command and the tests. It imports nothing from the rest
of ``batch`` (tests/test_layout.py checks every import), so it stays an independent witness of the
client rather than a mirror of its assumptions. ``server`` puts the parts together; see its docstring.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .answers import sim_pack_answer
    from .packs import PACK_FAULT_KINDS, read_pack
    from .server import (
        DECOMMISSIONED,
        FAULT_KINDS,
        KNOWN_MODELS,
        ORG,
        PREFIX,
        UPGRADE,
        LogEntry,
        ServedModel,
        SimConfig,
        Simulator,
        add_cli_arguments,
        config_from_args,
        count_prompt_tokens,
        count_tokens,
        go_duration,
        serve,
        sim_answer,
        sim_json_answer,
    )

__all__ = [
    "DECOMMISSIONED", "FAULT_KINDS", "KNOWN_MODELS", "ORG", "PACK_FAULT_KINDS", "PREFIX", "UPGRADE",
    "LogEntry", "ServedModel", "SimConfig", "Simulator", "add_cli_arguments", "config_from_args",
    "count_prompt_tokens", "count_tokens", "go_duration", "read_pack", "serve", "sim_answer",
    "sim_json_answer", "sim_pack_answer",
]


# Imported on first use, so that a run that does not simulate never loads the server (aiohttp.web).
_FROM_CONFIG = {"SimConfig", "add_cli_arguments", "config_from_args"}
_HOME = {"PACK_FAULT_KINDS": ".packs", "read_pack": ".packs", "sim_pack_answer": ".answers"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _HOME.get(name, ".config" if name in _FROM_CONFIG else ".server")
    module = importlib.import_module(home, __name__)
    return getattr(module, name)
