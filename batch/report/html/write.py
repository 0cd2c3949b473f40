"""The run report's files: `<output>.report.json` for schedulers, `<output>.report.html` for people.

    RunStats ─► figures (timeline, histograms, failures) ─► store (`run_figures`) ─► report data ─► HTML
    store: the last runs' summaries (cost history), the ledger's batches (Batch API timelines) ──┘

Every door calls `write_reports` when a run ends, finished or stopped; `python -m batch report` draws
the HTML again from what the store kept (`report_data`), without the run. The JSON is the contract: a
failure to write it is the run's failure. The HTML is a convenience: if it cannot be drawn (say
matplotlib is missing), a warning says so and the run's outcome is unchanged. The page is drawn in a
process of its own (`drawer`): the renderer (`page`, which owns matplotlib) never loads into the
run's process; a run starts that process as its pass 2 begins, so that the import is done meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from batch.errors import JobError
from batch.job.config import Job
from batch.report.html.drawer import Drawer
from batch.report.summary import RunStats, Summary
from batch.store import runlog
from batch.store.answers import Store
from batch.store.ledger import Ledger

log = logging.getLogger("batch")

HISTORY = 12  # runs shown in the cost history


def report_path(job: Job) -> Path:
    return job.output.path.with_name(job.output.path.name + ".report.json")


def html_path(job: Job) -> Path:
    return job.output.path.with_name(job.output.path.name + ".report.html")


def figures(job: Job, stats: RunStats) -> dict[str, Any]:
    """What the report plots beyond the summary; kilobytes whatever the number of rows."""
    lim = job.limits
    return {"timeline": stats.timeline.to_dict(), "latency": stats.latency.to_dict(),
            "queue": stats.queue.to_dict(), "failures": stats.failures.to_dict(),
            "limits": {"rpm": "job" if lim.requests_per_minute is not None else "learned",
                       "tpm": "job" if lim.tokens_per_minute is not None else "learned",
                       "concurrency": lim.concurrency}}


def write_reports(job: Job, summary: Summary, stats: RunStats, store: Store | None = None,
                  drawer: Drawer | None = None) -> None:
    """The JSON (raises OSError if it cannot be written), then the figures into the store and the
    HTML beside the JSON (a warning if they cannot). `store`: the run's own, still open; None after
    the run closed it (a stopped run), in which case the store is opened again if it is free.
    `drawer`: the drawing process the run started earlier (else one is started now)."""
    summary.write_json(report_path(job))
    figs = figures(job, stats)
    data: dict[str, Any] | None = None
    try:
        own = store is None
        if own:
            store = Store(job.state.path)
        assert store is not None
        try:
            runlog.save_figures(store, summary.to_json(), json.dumps(figs, separators=(",", ":")))
            data = report_data(job, store)
        finally:
            if own:
                store.close()
    except Exception as exc:  # a busy or old store: the JSON is written, the HTML shows this run alone
        log.warning("report: the run's figures could not be kept in %s (%s); the HTML shows this run only",
                    job.state.path, exc)
    if data is None:
        data = _data(job, json.loads(summary.to_json()), figs, [], [])
    write_html(data, html_path(job), drawer)


def write_html(data: dict[str, Any], path: Path, drawer: Drawer | None = None) -> bool:
    """Draw the HTML report (with `drawer`, else a drawing process started now); False (with a
    warning) if it could not be drawn or written."""
    try:
        page = (drawer or Drawer.start()).page(data)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
        return True
    except Exception as exc:  # a report that cannot be drawn must never fail the run
        log.warning("report: could not write %s (%s: %s); %s has the figures", path, type(exc).__name__,
                    exc, report_path_for(path))
        return False


def report_path_for(html: Path) -> Path:
    return html.with_name(html.name.removesuffix(".html") + ".json")


def report_data(job: Job, store: Store) -> dict[str, Any]:
    """Everything the HTML shows, for the store's last run (raises JobError if none was recorded)."""
    history = runlog.run_history(store, HISTORY)
    if not history:
        raise JobError(f"{job.file}: no run of this job has been recorded in {job.state.path} yet; "
                       f"run it first (python -m batch run {job.file.name})")
    run_id, started, summary_json, figures_json = history[0]
    summary = json.loads(summary_json)
    figs = json.loads(figures_json) if figures_json else {}
    figs.setdefault("run", run_id)
    figs.setdefault("started", started)
    past = [_past(rid, at, json.loads(text)) for rid, at, text, _ in reversed(history)]
    return _data(job, summary, figs, past, Ledger(store).timelines())


def _past(run_id: int, started: float, s: dict[str, Any]) -> dict[str, Any]:
    return {"run": run_id, "started": started, "status": s.get("status"), "mode": s.get("mode"),
            "rows": s.get("rows"), "rows_ok": s.get("rows_ok"), "rows_failed": s.get("rows_failed"),
            "requests": s.get("requests_sent"), "input_tokens": s.get("input_tokens"),
            "output_tokens": s.get("output_tokens"), "cost_usd": s.get("estimated_cost_usd"),
            "max_cost_usd": s.get("max_cost_usd")}


def _data(job: Job, summary: dict[str, Any], figs: dict[str, Any], history: list[dict[str, Any]],
          batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job": job.file.name, "generated": time.time(), "summary": summary, "figures": figs,
            "history": history, "batches": batches}
