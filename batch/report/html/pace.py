"""The run report's pace plot: requests and tokens per minute against the limits in force, with 429s,
retries and failed attempts on the same time axis below. Drawn with matplotlib, in `plots`' style.

The timeline comes as sparse buckets (`timeline.Timeline`); here they become evenly spaced series
(at most `MAX_POINTS`), and counts become rates averaged over a trailing window of a round number of
seconds, about a fifteenth of the run and at most a minute, so that a short run is not a flat line
and a long one is not noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from batch.report.html.plots import (
    BLUE,
    GREY,
    INK,
    ORANGE,
    PURPLE,
    RED,
    count,
    figure,
    span,
    style,
    time_unit,
    to_svg,
)

MAX_POINTS = 1500  # points per series drawn: more than a plot's width in pixels shows nothing new


def dense(tl: dict[str, Any]) -> tuple[float, dict[str, np.ndarray]]:
    """The timeline's sparse buckets as evenly spaced series (empty buckets as 0), at most MAX_POINTS."""
    width, keys = float(tl["width"]), [int(s // tl["width"]) for s in tl["second"]]
    n = keys[-1] + 1 if keys else 0
    factor = max(1, math.ceil(n / MAX_POINTS))
    size = math.ceil(n / factor)
    out: dict[str, np.ndarray] = {}
    for name, values in tl.items():
        if not isinstance(values, list) or name == "second":
            continue
        arr = np.zeros(size)
        for k, v in zip(keys, values, strict=True):
            if name in ("rpm", "tpm"):
                if v:
                    arr[k // factor] = v  # the later bucket's limit wins
            else:
                arr[k // factor] += v
        out[name] = arr
    return width * factor, out


def averaging_window(width: float, duration: float) -> float:
    """Seconds to average a rate over: about a fifteenth of the run, a round figure, at most a minute."""
    nice = [w for w in (1, 2, 5, 10, 15, 30, 60) if w <= max(1.0, duration / 15)]
    return max(width, float(nice[-1]))


def per_minute(counts: np.ndarray, width: float, window_s: float) -> np.ndarray:
    """A trailing average over `window_s`, per minute (at the start, over the time elapsed)."""
    w = max(1, round(window_s / width))
    cs = np.concatenate([[0.0], np.cumsum(counts)])
    idx = np.arange(1, len(counts) + 1)
    span = np.minimum(idx, w)
    rate: np.ndarray = (cs[idx] - cs[idx - span]) / (span * width) * 60.0
    return rate


def carried(limits: np.ndarray) -> np.ndarray:
    """Limits in force: each bucket's, carried forward over buckets that sent nothing (NaN before)."""
    out = np.where(limits > 0, limits, np.nan)
    for i in range(1, len(out)):
        if math.isnan(out[i]):
            out[i] = out[i - 1]
    return out


def pace(tl: dict[str, Any], sources: dict[str, str]) -> str:
    """Requests and tokens per minute against the limits in force; 429s, retries, errors below."""
    width, s = dense(tl)
    duration = width * len(s["requests"])
    unit, unit_name = time_unit(duration)
    window = averaging_window(width, duration)
    edges = np.arange(len(s["requests"]) + 1) * width / unit
    with style():
        fig = figure(10, 6.4, left=0.6, bottom=0.5, hspace=0.3)
        ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, height_ratios=[3, 3, 1.6])
        rpm, tpm = carried(s["rpm"]), carried(s["tpm"])
        _rate(ax1, edges, per_minute(s["requests"], width, window), rpm, BLUE,
              f"requests per minute ({_avg(window)})", limit_label(rpm, sources.get("rpm")))
        tokens_in = per_minute(s["input_tokens"], width, window)
        tokens_out = per_minute(s["output_tokens"], width, window)
        ax2.stairs(tokens_in + tokens_out, edges, fill=True, color=PURPLE, alpha=0.25, lw=0,
                   label="output tokens")
        ax2.stairs(tokens_in, edges, fill=True, color=BLUE, alpha=0.3, lw=0, label="input tokens")
        ax2.stairs(tokens_in + tokens_out, edges, color=PURPLE, lw=1.2, baseline=None)
        ax2.set_ylim(bottom=0)
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: count(v)))
        _limit(ax2, edges, tpm, limit_label(tpm, sources.get("tpm")))
        ax2.set_title(f"Tokens per minute ({_avg(window)})")
        ax2.legend(loc="upper right", ncols=3, fontsize=8.5)
        if s["errors"].any():
            ax3.stairs(s["errors"], edges, fill=True, color=GREY, alpha=0.45, lw=0,
                       label=f"other failed attempts ({int(s['errors'].sum())})")
        for name, color, label in (("retries", ORANGE, "retries"), ("rate_limited", RED, "429s")):
            if s[name].any():
                ax3.stairs(s[name], edges, color=color, lw=1.4, label=f"{label} ({int(s[name].sum())})",
                           baseline=None)
        ax3.set_title(f"429s, retries and errors (per {span(width)})")
        ax3.set_ylim(bottom=0)
        if ax3.get_legend_handles_labels()[0]:
            ax3.legend(loc="upper right", ncols=3, fontsize=8.5)
        ax3.set_xlabel(f"time since the run started ({unit_name})")
        ax3.set_xlim(0, edges[-1])
        marks = list(_marks(s["rate_limited"], width, unit))
        if marks:  # a rug of red ticks along the bottom of the requests panel: where 429s came back
            ax1.plot(marks, [0.0] * len(marks), ls="none", marker="|", ms=9, mew=1.4, color=RED,
                     transform=ax1.get_xaxis_transform(), clip_on=False)
        return to_svg(fig)


def _rate(ax: Axes, edges: np.ndarray, rate: np.ndarray, limit: np.ndarray, color: str, title: str,
          limit_label: str) -> None:
    ax.stairs(rate, edges, fill=True, color=color, alpha=0.22, lw=0)
    ax.stairs(rate, edges, color=color, lw=1.3, label="achieved", baseline=None)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: count(v)))
    _limit(ax, edges, limit, limit_label)
    ax.set_title(title[0].upper() + title[1:])
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", ncols=2, fontsize=8.5)


def _limit(ax: Axes, edges: np.ndarray, limit: np.ndarray, label: str) -> None:
    """The limit in force, dashed. One far above what was sent would flatten the plot: it is then
    drawn off the top, and the legend says so."""
    if not np.isfinite(limit).any():
        return
    sent = max(ax.dataLim.y1, 1.0)
    top = float(np.nanmax(limit))
    if top > 4 * sent:
        label += " (above the plot)"
    ax.stairs(limit, edges, color=INK, lw=1.2, ls=(0, (4, 3)), label=label, baseline=None)
    ax.set_ylim(0, max(top * 1.12, sent * 1.15) if top <= 4 * sent else sent * 1.3)


def _marks(counts: np.ndarray, width: float, unit: float) -> Iterator[float]:
    """Where 429s happened, at most a few hundred lines (the panel below has their counts)."""
    hits = np.flatnonzero(counts)
    step = max(1, math.ceil(len(hits) / 300))
    for i in hits[::step]:
        yield (i + 0.5) * width / unit


def _avg(seconds: float) -> str:
    return f"averaged over {span(seconds)}"


def limit_label(limit: np.ndarray, source: str | None) -> str:
    """Where the limit in force came from, and how it moved: "limit: the job's 1.2k, lowered to 873"."""
    values = limit[np.isfinite(limit)]
    if not len(values):
        return "limit"
    first, last = float(values[0]), float(values[-1])
    origin = "the job's" if source == "job" else "base tier" if source == "learned" else "in force:"
    if first == last:
        return f"limit: {origin} {count(first)}" + (", as Groq says" if source == "learned" else "")
    verb = "raised" if last > first else "lowered"
    return f"limit: {origin} {count(first)}, {verb} to {count(last)} by what Groq said"
