"""The run report as one self-contained HTML page: inline CSS and SVG plots, nothing fetched.

The page carries a Content-Security-Policy that forbids every load (no script, font, image or style
from anywhere but the page itself), so it reads the same offline, from a mail attachment or a CI
artifact. Every figure the JSON report has is in the page with its exact value (`data-key`,
`data-value`), next to the plots (`plots`, `pace`, `runs`) that show the same run over time.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from batch.report.html import pace, plots, runs

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
:root { color-scheme: light; --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --card:#fff; --bg:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); line-height:1.45;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 20px 40px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
.kicker { display:block; font-size:12px; font-weight:600; letter-spacing:.06em; text-transform:uppercase;
  color:var(--muted); margin-bottom:2px; }
.pill { display:inline-block; padding:2px 10px; border-radius:999px; font-size:13px; font-weight:600;
  vertical-align: middle; margin-left: 8px; color:#fff; background:#2b9348; }
.pill.failed-rows { background:#f08c00; } .pill.stopped { background:#616e7c; }
.pill.fatal { background:#d64545; }
.tiles { display:grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap:10px;
  margin:18px 0; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.tile .k { color:var(--muted); font-size:12px; } .tile .v { font-size:19px; font-weight:650; }
.tile .s { color:var(--muted); font-size:12px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 18px;
  margin:16px 0; }
section h2 { font-size:16px; margin:2px 0 8px; }
figure { margin: 6px 0; } svg.plot { width:100%; height:auto; display:block; }
figcaption, .note { color:var(--muted); font-size:12.5px; margin-top:4px; }
table { border-collapse: collapse; width:100%; font-size:13px; margin-top:8px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align: top; }
th { color:var(--muted); font-weight:600; }
td.n, th.n { text-align:right; font-variant-numeric: tabular-nums; }
td.err { font-family: ui-monospace, Menlo, Consolas, monospace; font-size:12px; word-break: break-word; }
.message { background:#fff8e6; border:1px solid #ffe3a3; border-radius:8px; padding:10px 14px; }
footer { color:var(--muted); font-size:12px; margin-top:20px; }
"""
BATCHES_SHOWN = 60
NONE = "\u2013"  # an en dash, for a figure that is not known
# (key, label, format): the JSON report's figures, in the order the tiles show them.
TILES = (("rows", "rows", "int"), ("rows_ok", "rows ok", "int"), ("rows_failed", "rows failed", "int"),
         ("rows_from_store", "from the store", "int"), ("requests_sent", "requests sent", "int"),
         ("retries", "retries", "int"), ("rate_limited_429", "429s", "int"),
         ("input_tokens", "input tokens", "int"), ("output_tokens", "output tokens", "int"),
         ("estimated_cost_usd", "estimated cost", "usd"), ("max_cost_usd", "spend cap", "usd"),
         ("requests_per_min", "requests / min", "rate"), ("tokens_per_min", "tokens / min", "rate"),
         ("latency_p50_s", "latency p50", "s"), ("latency_p95_s", "latency p95", "s"),
         ("latency_p99_s", "latency p99", "s"), ("queue_time_p50_s", "queue time p50", "s"),
         ("queue_time_p95_s", "queue time p95", "s"), ("elapsed_s", "elapsed", "s"),
         ("batches", "Batch API batches", "int"), ("batch_requests", "requests in batches", "int"),
         ("pack_sizes", "packs (rows x packs)", "packs"), ("rows_resent", "rows sent again", "int"))
_PACKED = ("pack_sizes", "rows_resent")  # shown when the run sent packs (rows-per-request)


def render(data: dict[str, Any]) -> str:
    s, figs = data["summary"], data.get("figures") or {}
    parts = [_header(data), _tiles(s)]
    if s.get("message"):
        parts.append(f'<p class="message">{_e(s["message"])}</p>')
    tl = figs.get("timeline") or {}
    if any(tl.get("requests") or ()):  # a Batch API run that sent nothing online has no pace to show
        parts.append(_section("Pace against the limits", "pace", pace.pace(tl, figs.get("limits") or {}),
                              "Requests and tokens sent per minute (solid) against the limits the run "
                              "paced itself to at the time (dashed: the job's own, or learned from "
                              "Groq's headers and 429s). Red ticks on the time axis mark 429 answers; "
                              "the bottom panel counts 429s, retries and other failed attempts."))
    lat_marks = [(q, s.get(f"latency_{q}_s")) for q in ("p50", "p95", "p99")]
    queue_marks = [(q, s.get(f"queue_time_{q}_s")) for q in ("p50", "p95")]
    if any((figs.get(h) or {}).get("count") for h in ("latency", "queue")):
        lat = plots.latency(figs.get("latency") or {}, figs.get("queue") or {}, lat_marks, queue_marks)
        parts.append(_section("Latency", "latency", lat,
                              "Seconds from sending a request to its answer, as measured here (left), "
                              "and the part Groq says the request waited in its queue (right); log scale."))
    parts.append(_rows(s, figs.get("failures") or {}))
    if data.get("history"):
        parts.append(_cost(data["history"], figs.get("run"), s.get("max_cost_usd")))
    if data.get("batches"):
        parts.append(_batches(data["batches"]))
    parts.append(f"<footer>Written {_when(data.get('generated'))} by batch. A single file: no script, and "
                 f"nothing is fetched from anywhere. The figures are in {_e(data['job'])}'s "
                 f"<code>.report.json</code>.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>batch report: {_e(data['job'])}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def _header(data: dict[str, Any]) -> str:
    s, figs = data["summary"], data.get("figures") or {}
    status = str(s.get("status"))
    started = (figs.get("timeline") or {}).get("started") or figs.get("started")
    bits = [f"model {s.get('model')}", f"{s.get('mode', 'online')} mode", f"started {_when(started)}"]
    if s.get("output"):
        bits.append(f"output {s['output']}")
    return (f'<header><h1><span class="kicker">Run report</span>{_e(data["job"])}'
            f'<span class="pill {_e(status)}" data-key="status" '
            f'data-value="{_e(json.dumps(status))}">{_e(status)}</span></h1>'
            f'<p>{_e(" · ".join(bits))}</p></header>')


def _tiles(s: dict[str, Any]) -> str:
    out = []
    for key, label, fmt in TILES:
        if key not in s or (key.startswith("batch") and not s.get("batches")) or \
                (key in _PACKED and not s.get("pack_sizes")):
            continue
        value = s[key]
        out.append(f'<div class="tile"><div class="k">{_e(label)}</div><div class="v" data-key="{key}" '
                   f'data-value="{_e(json.dumps(value))}">{_e(_fmt(value, fmt))}</div></div>')
    return f'<div class="tiles">{"".join(out)}</div>'


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return NONE
    if fmt == "int":
        return f"{int(v):,}"
    if fmt == "usd":
        return plots.money(v)
    if fmt == "packs":  # {"20": 48, "10": 2}: 48 packs of 20 rows, 2 of 10
        return ", ".join(f"{rows} x {n:,}" for rows, n in v.items())
    if fmt == "rate":
        return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:,.2f} s"


def _section(title: str, name: str, svg: str, caption: str, extra: str = "") -> str:
    return (f'<section><h2>{_e(title)}</h2><figure data-plot="{name}">{svg}'
            f"<figcaption>{_e(caption)}</figcaption></figure>{extra}</section>")


def _rows(s: dict[str, Any], failures: dict[str, Any]) -> str:
    bars = [("ok", int(s.get("rows_ok") or 0)), ("from the store", int(s.get("rows_from_store") or 0))]
    kinds = sorted((failures.get("kinds") or {}).items(), key=lambda kv: -kv[1])
    bars += [(f"failed: {k}", int(v)) for k, v in kinds]
    if not kinds and s.get("rows_failed"):
        bars.append(("failed", int(s["rows_failed"])))
    first = failures.get("first") or []
    table = ""
    if first:
        body = "".join(f'<tr><td class="n">{"" if f.get("row") is None else f["row"] + 1}</td>'
                       f'<td class="err">{_e(f.get("error"))}</td></tr>' for f in first)
        table = ('<h2>First failed rows</h2><table data-table="failures"><tr><th class="n">row</th>'
                 f"<th>error</th></tr>{body}</table>")
    errors = s.get("errors") or {}
    if errors:
        body = "".join(f'<tr><td>{_e(k)}</td><td class="n" data-key="errors.{_e(k)}" data-value="{v}">'
                       f"{v:,}</td></tr>" for k, v in sorted(errors.items()))
        table += (f'<h2>Failed attempts by kind</h2><table data-table="errors"><tr><th>HTTP status or '
                  f'error</th><th class="n">attempts</th></tr>{body}</table>')
    stopped = s.get("status") in ("stopped", "fatal")
    what = ("Requests this stopped run answered and failed (no output was written)" if stopped else
            "Every row of the output: answered (of which from the store: paid for by earlier runs), "
            "and failed, by kind of failure")
    if not any(n for _, n in bars):
        return ('<section><h2>Rows</h2><p class="note">No row was answered or failed by this run.</p>'
                f"{table}</section>")
    return _section("Rows", "rows", runs.rows(bars), what + ".", table)


def _cost(history: list[dict[str, Any]], current: int | None, cap: float | None) -> str:
    body = "".join(
        f'<tr><td>#{h["run"]}</td><td>{_when(h.get("started"))}</td><td>{_e(h.get("status"))}</td>'
        f'<td>{_e(h.get("mode"))}</td><td class="n">{_int(h.get("rows"))}</td>'
        f'<td class="n">{_int(h.get("requests"))}</td><td class="n">{_int(h.get("input_tokens"))}</td>'
        f'<td class="n">{_int(h.get("output_tokens"))}</td><td class="n">{_fmt(h.get("cost_usd"), "usd")}'
        "</td></tr>" for h in reversed(history))
    table = ('<table data-table="history"><tr><th>run</th><th>started</th><th>status</th><th>mode</th>'
             '<th class="n">rows</th><th class="n">requests</th><th class="n">tokens in</th>'
             '<th class="n">tokens out</th><th class="n">cost</th></tr>'
             f"{body}</table>")
    note = "" if cap is None else f" The dashed line is the spend cap, [limits] max-cost-usd = {cap:g}."
    return _section("Cost across the last runs", "cost", runs.cost(history, current, cap),
                    "Estimated cost of each of this job's last runs, at the catalog's prices (Batch API "
                    f"requests at half price); this run is the darker bar.{note}", table)


def _batches(items: list[dict[str, Any]]) -> str:
    """The job's submissions; the last `BATCHES_SHOWN` of them when there are more (a page of any job
    stays small: the ledger keeps them all, `status` lists them)."""
    shown = items[-BATCHES_SHOWN:]
    rows = []
    for b in shown:
        counts = json.loads(b["counts"]) if isinstance(b.get("counts"), str) else (b.get("counts") or {})
        counts = counts or {}
        rows.append(f'<tr><td>{_e(b.get("batch_id") or b.get("name"))}</td><td>{_e(b.get("status"))}</td>'
                    f'<td class="n">{_int(b.get("lines"))}</td><td class="n">{_int(counts.get("completed"))}'
                    f'</td><td class="n">{_int(counts.get("failed"))}</td></tr>')
    table = ('<table data-table="batches"><tr><th>batch</th><th>status</th><th class="n">requests</th>'
             f'<th class="n">completed</th><th class="n">failed</th></tr>{"".join(rows)}</table>')
    more = (f" The last {len(shown)} of the job's {len(items)} submissions are shown."
            if len(shown) < len(items) else "")
    return _section("Batch API", "batches", runs.batches(shown),
                    "Each submission from the moment its file was written: validating, in progress, "
                    "finalizing, then how it ended and when its results were merged into the store "
                    f"(Groq's own times where its batch object gives them, else when a poll first saw "
                    f"the status).{more}", table)


def _int(v: Any) -> str:
    return NONE if v is None else f"{int(v):,}"


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return NONE
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)
