"""The run report's plots of outcomes: rows by outcome, cost across the last runs, Batch API timelines.

Drawn with matplotlib to inline SVG, in the style of `plots` (which owns the SVG clean-up).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from . import plots
from .plots import figure, money, style, time_unit, to_svg

KIND_COLOURS = (plots.RED, plots.ORANGE, "#c2255c", "#e8590c", "#a61e4d", "#f59f00", "#862e9c")
PHASES = {"prepared": plots.GREY, "uploaded": plots.GREY, "submitted": plots.MUTED,
          "validating": plots.MUTED, "in_progress": plots.BLUE, "finalizing": plots.TEAL,
          "completed": plots.GREEN, "failed": plots.RED, "expired": plots.ORANGE, "cancelling": plots.ORANGE,
          "cancelled": plots.ORANGE, "abandoned": plots.RED, "merged": plots.GREEN}


def rows(bars: Sequence[tuple[str, int]]) -> str:
    """One horizontal bar per outcome ("ok", "from the store", each kind of failure), with its count."""
    with style():
        fig = figure(10, 0.5 + 0.34 * len(bars))
        ax = fig.subplots()
        labels = [b[0] for b in bars][::-1]
        counts = [b[1] for b in bars][::-1]
        colours = [_colour(label, i) for i, label in enumerate(labels[::-1])][::-1]
        ax.barh(labels, counts, color=colours, height=0.62)
        top = max([*counts, 1])
        for y, c in enumerate(counts):
            ax.text(c + top * 0.01, y, f"{c:,}", va="center", fontsize=9, color=plots.INK)
        ax.set_xlim(0, top * 1.12)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("rows")
        return to_svg(fig)


def _colour(label: str, i: int) -> str:
    if label.startswith("ok"):
        return plots.GREEN
    if label.startswith("from the store"):
        return plots.TEAL
    return KIND_COLOURS[i % len(KIND_COLOURS)]


def cost(history: Sequence[dict[str, Any]], current: int | None, cap: float | None) -> str:
    """Estimated cost of each of the last runs (this one darker), the spend cap as a line."""
    with style():
        fig = figure(10, 2.6)
        ax = fig.subplots()
        x = np.arange(len(history))
        values = [float(h.get("cost_usd") or 0) for h in history]
        colours = [plots.BLUE if h.get("run") == current else "#a9c1ee" for h in history]
        ax.bar(x, values, color=colours, width=0.6)
        ax.set_xticks(x, [f"#{h.get('run')}" for h in history])
        top = max([*values, cap or 0, 0.001])  # all free: an axis of cents, not of 1e-9
        for i, v in enumerate(values):
            ax.text(i, v + top * 0.02, money(v), ha="center", fontsize=8, color=plots.INK)
        if cap:
            ax.axhline(cap, color=plots.RED, lw=1.2, ls=(0, (4, 3)))
            ax.text(max(len(history), 8) - 0.5, cap, f"spend cap {money(cap)} per run", ha="right",
                    va="bottom", fontsize=8.5, color=plots.RED)
        ax.set_ylim(0, top * 1.2)
        ax.set_xlim(-0.6, max(len(history), 8) - 0.4)  # a lone run is one bar, not the whole width
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: money(v)))
        ax.set_ylabel("estimated cost (USD)")
        ax.set_xlabel("run")
        ax.set_title("Estimated cost per run")
        return to_svg(fig)


def batches(items: Sequence[dict[str, Any]]) -> str:
    """Each Batch API submission as a bar of its phases (prepared, validating, in progress, ...)."""
    stamps = [t for b in items for t in (b.get("times") or {}).values() if isinstance(t, int | float)]
    t0 = min(stamps) if stamps else 0.0
    unit, unit_name = time_unit(max(stamps) - t0 if stamps else 0.0)
    with style():
        fig = figure(10, 0.9 + 0.42 * len(items))
        ax = fig.subplots()
        seen: set[str] = set()
        for y, b in enumerate(items):
            times = sorted((t, s) for s, t in (b.get("times") or {}).items() if isinstance(t, int | float))
            for (start, phase), (end, _) in itertools.pairwise(times):
                label = None if phase in seen else phase.replace("_", " ")
                seen.add(phase)
                ax.barh(y, max((end - start) / unit, 1e-9), left=(start - t0) / unit, height=0.55,
                        color=PHASES.get(phase, plots.PURPLE), label=label)
            if times:
                last_t, last = times[-1]
                ax.plot([(last_t - t0) / unit], [y], marker="o", color=PHASES.get(last, plots.PURPLE), ms=5)
        ax.set_yticks(range(len(items)), [str(b.get("batch_id") or b.get("name")) for b in items],
                      fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"time since the first file was prepared ({unit_name})")
        ax.set_title("Batch API submissions")
        if seen:
            ax.legend(loc="upper left", fontsize=8, bbox_to_anchor=(1.0, 1.0))
        return to_svg(fig)
