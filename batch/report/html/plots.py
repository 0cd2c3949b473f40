"""The run report's plots, drawn with matplotlib to inline SVG: their style, the SVG clean-up, latency.

With `pace` (the pace against the limits) and `runs` (rows, cost, Batch API timelines), the
only modules that import matplotlib, and only when a report is drawn.

Each function takes the report's plain figures and returns one `<svg>` element ready to paste into
HTML: no XML prolog, no DOCTYPE (its URL would be the page's only outside reference), no metadata,
text kept as text in the page's own fonts (`svg.fonttype = none`), ids made unique per plot so that
several SVGs can share a page. Series are drawn as one path each (stairs, lines), never one shape per
bucket, so a plot stays tens of kilobytes however long the run. No pyplot: no global state, no GUI.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

INK, GRID, MUTED = "#1f2933", "#e4e7eb", "#7b8794"
BLUE, PURPLE, GREEN, TEAL = "#2f6fde", "#8e5cd9", "#2b9348", "#62b6cb"
RED, ORANGE, GREY = "#d64545", "#f08c00", "#9aa5b1"
STYLE: dict[str, object] = {
    "svg.fonttype": "none", "svg.hashsalt": "batch-report", "font.family": "sans-serif", "font.size": 9.5,
    "axes.edgecolor": GREY, "axes.labelcolor": INK, "xtick.color": MUTED, "ytick.color": MUTED,
    "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8, "axes.spines.top": False,
    "axes.spines.right": False, "legend.frameon": False, "axes.titlesize": 10.5, "axes.titleweight": "bold",
    "axes.titlelocation": "left"}
_serial = itertools.count(1)


def to_svg(fig: Figure) -> str:
    """The figure as an inline `<svg>` that scales to its container's width."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="plot"', svg, count=1)
    svg = re.sub(r"font-family:[^;\"']*('[^']*'[^;\"]*)?", "font-family: inherit", svg)
    n = next(_serial)
    svg = re.sub(r'id="([^"]+)"', rf'id="p{n}-\1"', svg)
    return re.sub(r'(url\(#|href="#)', rf"\1p{n}-", svg)


def figure(width: float, height: float, *, left: float = 0.7, right: float = 0.15, top: float = 0.32,
           bottom: float = 0.5, hspace: float = 0.0, wspace: float = 0.0) -> Figure:
    """A figure of `width` x `height` inches with fixed margins, in inches (`hspace`, `wspace`: between
    subplots). Fixed rather than computed by a layout engine, which would double the drawing time."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, hspace=hspace, wspace=wspace)
    return fig


def label_width(labels: Sequence[str]) -> float:
    """Inches to leave left of an axis for these tick labels (the style's font, roughly)."""
    return 0.25 + 0.068 * max((len(t) for t in labels), default=4)


def style() -> Any:
    return matplotlib.rc_context(STYLE)  # type: ignore[arg-type]  # its keys are typed as literals


# -- figures as text -------------------------------------------------------------------------------
def time_unit(duration_s: float) -> tuple[float, str]:
    if duration_s <= 180:
        return 1.0, "seconds"
    return (60.0, "minutes") if duration_s <= 3 * 3600 else (3600.0, "hours")


def span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    return f"{seconds / 60:.2g} min" if seconds < 7200 else f"{seconds / 3600:.2g} h"


def count(v: float) -> str:
    """An axis figure: 800, 12k, 1.5M."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def money(v: float) -> str:
    """$1,234.56, $0.0127, $0.000045: enough digits to tell small runs apart."""
    if v >= 1 or v == 0:
        return f"${v:,.2f}"
    return f"${v:.4f}" if v >= 0.01 else f"${v:.2g}".replace("e-0", "e-")


# -- distributions ------------------------------------------------------------------------------------
def latency(lat: dict[str, Any], queue: dict[str, Any], marks: Sequence[tuple[str, float | None]],
            queue_marks: Sequence[tuple[str, float | None]]) -> str:
    """Latency and Groq's queue time, each as a histogram on a log axis with its percentiles."""
    with style():
        fig = figure(10, 2.9, left=0.75, bottom=0.4, wspace=0.3)
        axes = fig.subplots(1, 2)
        _histogram(axes[0], lat, marks, BLUE, "Latency per request")
        _histogram(axes[1], queue, queue_marks, TEAL, "Groq's queue time")
        return to_svg(fig)


def _histogram(ax: Axes, h: dict[str, Any], marks: Sequence[tuple[str, float | None]], color: str,
               title: str) -> None:
    shown = [(name, value) for name, value in marks if value]
    ax.set_title(title + (": " + ", ".join(f"{n} {secs(v)}" for n, v in shown) if shown else ""))
    upper, counts = np.asarray(h.get("upper") or [], float), np.asarray(h.get("count") or [], float)
    if not counts.sum():
        ax.text(0.5, 0.5, "nothing measured this run", transform=ax.transAxes, ha="center", color=MUTED)
        ax.set_yticks([])
        ax.set_xticks([])
        return
    centres = np.log10(upper / math.sqrt(float(h.get("ratio") or 1.02)))
    lo, hi = centres.min(), centres.max()
    if hi - lo < 0.2:
        lo, hi = lo - 0.1, hi + 0.1
    hist, edges = np.histogram(centres, bins=30, range=(lo, hi), weights=counts)
    ax.stairs(hist, 10**edges, fill=True, color=color, alpha=0.35, lw=0)
    ax.stairs(hist, 10**edges, color=color, lw=1.2)
    ax.set_xscale("log")
    ax.set_ylabel("requests")
    top = hist.max()
    for i, (name, value) in enumerate(shown):
        ax.axvline(value, color=INK, lw=0.9, ls=(0, (3, 2)))
        ax.text(value, top * (1.04 + 0.11 * i), f" {name}", fontsize=8.5, color=INK)
    ax.set_ylim(0, top * 1.4)
    # 1-2-5 ticks over a decade or so; over more, one a decade, or their labels would overlap.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if hi - lo < 1.3 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: secs(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def secs(v: float) -> str:
    if v < 1:
        return f"{v * 1000:.3g} ms"
    return f"{v:.3g} s" if v < 120 else f"{v / 60:.3g} min"
