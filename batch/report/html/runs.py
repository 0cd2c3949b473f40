"""The run report's plots of outcomes: rows by outcome, cost across the last runs, Batch API timelines.

Drawn with matplotlib to inline SVG, in the style of `plots` (which owns the SVG clean-up).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from batch.report.html import plots
from batch.report.html.plots import figure, label_width, money, style, time_unit, to_svg

KIND_COLOURS = (plots.RED, plots.ORANGE, "#c2255c", "#e8590c", "#a61e4d", "#f59f00", "#862e9c")
PHASES = {  # a batch's phases in the order it goes through them, and their colours
    "prepared": plots.GREY, "uploaded": plots.GREY, "submitted": plots.MUTED, "validating": plots.MUTED,
    "in_progress": plots.BLUE, "finalizing": plots.TEAL, "cancelling": plots.ORANGE,
    "completed": plots.GREEN, "failed": plots.RED, "expired": plots.ORANGE, "cancelled": plots.ORANGE,
    "abandoned": plots.RED, "merged": "#1b5e20"}


def rows(bars: Sequence[tuple[str, int]]) -> str:
    """One horizontal bar per outcome ("ok", "from the store", each kind of failure), with its count."""
    with style():
        fig = figure(10, 0.55 + 0.34 * len(bars), left=label_width([b[0] for b in bars]), top=0.08,
                     right=0.3, bottom=0.47)
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
        fig = figure(10, 2.6, left=0.95, bottom=0.55)
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
        ax.set_ylim(0, top * 1.2)
        ax.set_xlim(-0.6, max(len(history), 8) - 0.4)  # a lone run is one bar, not the whole width
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: money(v)))
        ax.set_ylabel("estimated cost (USD)")
        ax.set_xlabel("run")
        ax.set_title("Estimated cost per run" + (f" (red dashes: the spend cap, {money(cap)} per run)"
                                                  if cap else ""))
        return to_svg(fig)


def batches(items: Sequence[dict[str, Any]]) -> str:
    """Each Batch API submission as a bar of its phases (prepared, validating, in progress, ...)."""
    phases = [_phases(b.get("times") or {}) for b in items]
    starts = [times[0][1] for times in phases if times]
    t0 = min(starts) if starts else 0.0
    unit, unit_name = time_unit(max(t for times in phases for _, t in times) - t0 if starts else 0.0)
    with style():
        names = [str(b.get("batch_id") or b.get("name")) for b in items]
        many = len(items) > 24  # then one thin bar each, unnamed (the table below names them)
        fig = figure(10, 1.2 + min(0.42 * len(items), 6.0), left=0.6 if many else label_width(names),
                     bottom=0.85)
        ax = fig.subplots()
        seen: set[str] = set()
        for y, times in enumerate(phases):
            for (phase, start), (_, end) in itertools.pairwise(times):
                seen.add(phase)
                ax.barh(y, max((end - start) / unit, 1e-9), left=(start - t0) / unit, height=0.55,
                        color=PHASES.get(phase, plots.PURPLE))
            if times:
                last, last_t = times[-1]
                seen.add(last)
                ax.plot([(last_t - t0) / unit], [y], marker="o", color=PHASES.get(last, plots.PURPLE), ms=5)
        if many:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(items)} submissions, first on top")
        else:
            ax.set_yticks(range(len(items)), names, fontsize=8)
        ax.set_ylim(len(items) - 0.5, -0.5)  # the first submission on top
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"time since the first file was prepared ({unit_name})")
        ax.set_title("Batch API submissions")
        if seen:  # in the order a batch goes through them
            handles = [Patch(color=PHASES.get(p, plots.PURPLE), label=p.replace("_", " "))
                       for p in sorted(seen, key=_rank)]
            fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8,
                       bbox_to_anchor=(0.5, 0.0))
        return to_svg(fig)


def _rank(phase: str) -> int:
    return list(PHASES).index(phase) if phase in PHASES else len(PHASES)


def _phases(times: dict[str, Any]) -> list[tuple[str, float]]:
    """A batch's stamps in the order of its phases, each no earlier than the one before: Groq's own
    times are whole seconds, and may fall just before a phase this program saw a moment earlier."""
    out: list[tuple[str, float]] = []
    for phase, at in sorted(((p, float(t)) for p, t in times.items() if isinstance(t, int | float)),
                            key=lambda pt: (_rank(pt[0]), pt[1])):
        out.append((phase, max(at, out[-1][1]) if out else at))
    return out
