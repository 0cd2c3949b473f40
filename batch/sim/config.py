"""The simulator's knobs: :class:`SimConfig`, and the ``simulate`` command's options that fill it.

This module owns what can be set on the Groq simulator and its checks: the per-model rate limits
(RPM, TPM, RPD, TPD) and the burst, latency and jitter, the injectable faults (:data:`FAULT_KINDS`)
and their rate, the pack faults (:data:`PACK_FAULT_KINDS`: an item of a packed request lost, repeated
or renamed) and their rate, the length of the simulated day, and the Batch API's timings, models, fault
rate and quirks (an account whose plan has no Batch API, an empty object for "no error file").
:func:`add_cli_arguments` and :func:`config_from_args` turn the same knobs into command-line options
and back, with SimConfig's defaults.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .answers import KNOWN_MODELS
from .packs import PACK_FAULT_KINDS

FAULT_KINDS = ("500", "502", "503", "498", "drop", "malformed", "hang")


@dataclass
class SimConfig:
    """Knobs of the simulator; limits are per model, like Groq's. Tests may change it at runtime."""

    api_key: str | None = None  # None: any non-empty bearer token is accepted
    rpm: int = 30
    tpm: int = 8000
    rpd: int = 1000
    tpd: int = 200_000
    burst_s: float = 60.0  # seconds of the per-minute budget the buckets hold (60 = Groq's burst)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    hang_s: float = 300.0
    seed: int = 0  # seeds the fault RNGs once, when the Simulator is created
    # Packs (several rows in one request, see .packs): the probability, per item, that an item of a pack
    # is damaged, and how (drawn from a stream of the seed's own, online and in the Batch API alike).
    pack_fault_rate: float = 0.0
    pack_faults: tuple[str, ...] = PACK_FAULT_KINDS
    day_s: float = 86400.0  # length of the simulated day for RPD/TPD, short in tests
    # Batch API. A batch keeps the timing knobs it was created with, so its schedule never jumps.
    batch_validate_s: float = 0.2  # real seconds a batch spends in `validating`
    batch_models: tuple[str, ...] | None = None  # models the Batch API takes; None: every known model
    batch_lines_per_s: float = 500.0  # real-time rate at which `in_progress` answers lines
    batch_time_scale: float = 3600.0  # simulated seconds per real second: "24h" lasts 24 s
    batch_finalize_s: float = 0.2  # real seconds in `finalizing`, and in `cancelling`
    batch_fault_rate: float = 0.0  # probability that a batch line gets a 500 instead of an answer
    # Groq's quirks seen by users of other clients (docs/groq.md, "Batch API"): an account whose plan has
    # no Batch API gets 403 `not_available_for_plan` from every /files and /batches call; a batch that
    # ends without an error file may show `"error_file_id": {}` (an empty object) instead of null.
    batch_available: bool = True
    batch_empty_error_file_id: bool = False

    def __post_init__(self) -> None:
        if self.batch_models is not None:
            self.batch_models = tuple(self.batch_models)
        problem = self.problem()
        if problem is not None:
            raise SimConfigError(*problem)

    def problem(self) -> tuple[str, str] | None:
        """The first knob that is out of range, as (field name, what is wrong), or None."""
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            return "faults", f"has unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}"
        unknown = sorted(set(self.pack_faults) - set(PACK_FAULT_KINDS))
        if unknown:
            return "pack_faults", (f"has unknown pack fault kinds {unknown}; choose from "
                                   f"{', '.join(PACK_FAULT_KINDS)}")
        for name in ("rpm", "tpm", "rpd", "tpd"):
            if getattr(self, name) < 1:
                return name, f"must be at least 1, not {getattr(self, name)}"
        # Positive: they divide the pace or the schedule (zero would stall it, or end every window at
        # once); the others are delays and may be 0. NaN passes every comparison, so finiteness first.
        positive = ("burst_s", "day_s", "batch_lines_per_s", "batch_time_scale")
        for name in ("burst_s", "day_s", "latency_ms", "jitter_ms", "hang_s", "batch_validate_s",
                     "batch_finalize_s", "batch_lines_per_s", "batch_time_scale"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                bound = "above 0" if name in positive else "of at least 0"
                return name, f"must be a finite number {bound}, not {value}"
        for name in ("fault_rate", "pack_fault_rate", "batch_fault_rate"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:  # False for NaN too
                return name, f"must be a probability within 0..1, not {value}"
        if self.batch_models is not None:
            unknown = sorted(set(self.batch_models) - set(KNOWN_MODELS))
            if unknown:
                known = ", ".join(KNOWN_MODELS)
                return "batch_models", f"has unknown batch models {unknown}; choose from {known}"
        return None


class SimConfigError(ValueError):
    """A knob out of range; `field` is SimConfig's name for it (the command line's is `--field-name`)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` command's options; the defaults are SimConfig's."""
    d = SimConfig()
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--api-key", default=None, help="require this key (default: any non-empty key)")
    options: tuple[tuple[str, type[int] | type[float], float, str], ...] = (
        ("--rpm", int, d.rpm, "requests per minute, per model"),
        ("--tpm", int, d.tpm, "tokens per minute, per model"),
        ("--rpd", int, d.rpd, "requests per day, per model"),
        ("--tpd", int, d.tpd, "tokens per day, per model"),
        ("--burst-s", float, d.burst_s, "seconds of the minute budget usable at once (60 = Groq)"),
        ("--latency-ms", float, d.latency_ms, "delay before each answer"),
        ("--jitter-ms", float, d.jitter_ms, "extra uniform random delay"),
        ("--fault-rate", float, d.fault_rate, "probability that a request gets a fault"),
        ("--hang-s", float, d.hang_s, "how long a 'hang' fault holds the request"),
        ("--pack-fault-rate", float, d.pack_fault_rate,
         "probability that an item of a packed request is lost, repeated or renamed (see --pack-faults)"),
        ("--seed", int, d.seed, "seed of the fault RNGs (and of the Batch API's order and faults)"),
        ("--batch-validate-s", float, d.batch_validate_s, "seconds a batch spends validating"),
        ("--batch-lines-per-s", float, d.batch_lines_per_s, "batch lines answered per second"),
        ("--batch-time-scale", float, d.batch_time_scale,
         "simulated seconds per real second of a batch's completion window (3600: 24h lasts 24 s)"),
        ("--batch-finalize-s", float, d.batch_finalize_s, "seconds a batch spends finalizing or cancelling"),
        ("--batch-fault-rate", float, d.batch_fault_rate, "probability that a batch line gets a 500"),
    )
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument("--faults", default=",".join(d.faults), help="fault kinds (default %(default)s)")
    parser.add_argument("--pack-faults", default=",".join(d.pack_faults),
                        help="pack fault kinds: lose (an item left out), repeat (an item given twice, the "
                             "second time with a wrong answer), rename (an item under an unknown id) "
                             "(default %(default)s)")
    parser.add_argument("--batch-models", default=None,
                        help="comma-separated models the Batch API accepts (default: every known model)")
    parser.add_argument("--no-batch-api", action="store_true",
                        help="answer every Batch API call 403 not_available_for_plan, as Groq does for a "
                             "plan without the Batch API")
    parser.add_argument("--batch-empty-error-file-id", action="store_true",
                        help='show "error_file_id": {} (not null) on a batch without an error file')


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """A SimConfig from options parsed by `add_cli_arguments`; ValueError, naming the option as it is
    typed (`--fault-rate must be ...`), if they are invalid."""
    if not 0 <= ns.port <= 65535:
        raise ValueError(f"--port must be within 0..65535 (0: any free port), not {ns.port}")
    try:
        return SimConfig(
            api_key=ns.api_key, rpm=ns.rpm, tpm=ns.tpm, rpd=ns.rpd, tpd=ns.tpd, burst_s=ns.burst_s,
            latency_ms=ns.latency_ms, jitter_ms=ns.jitter_ms, fault_rate=ns.fault_rate,
            faults=tuple(k.strip() for k in ns.faults.split(",") if k.strip()), hang_s=ns.hang_s,
            seed=ns.seed, pack_fault_rate=ns.pack_fault_rate,
            pack_faults=tuple(k.strip() for k in ns.pack_faults.split(",") if k.strip()),
            batch_validate_s=ns.batch_validate_s, batch_lines_per_s=ns.batch_lines_per_s,
            batch_time_scale=ns.batch_time_scale, batch_finalize_s=ns.batch_finalize_s,
            batch_fault_rate=ns.batch_fault_rate,
            batch_available=not ns.no_batch_api, batch_empty_error_file_id=ns.batch_empty_error_file_id,
            batch_models=None if ns.batch_models is None
            else tuple(m.strip() for m in ns.batch_models.split(",") if m.strip()),
        )
    except SimConfigError as exc:
        raise ValueError(f"--{exc.field.replace('_', '-')} {exc.problem}") from None
