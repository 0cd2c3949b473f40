"""The commands beside `run`: plan, status, report, cancel, models, simulate — argv already parsed, output
printed."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from batch import sim
from batch.batchapi.cancel import cancel as cancel_batches
from batch.batchapi.endpoints import BatchApi
from batch.doors.simulated import KEY as SIMULATED_KEY
from batch.doors.simulated import kept_apart
from batch.engine.plan import describe, make_plan
from batch.engine.status import status as job_status
from batch.errors import EXIT_OK, EXIT_ROWS_FAILED, JobError
from batch.job import endpoint
from batch.job.config import Job, load_job
from batch.report.html.write import html_path, report_data, write_html
from batch.send.client import Client
from batch.store.answers import Store

log = logging.getLogger("batch")

def plan(path: Path, *, limit: int | None, mode: str | None, as_json: bool) -> int:
    job = load_job(path)
    made = make_plan(job, limit, mode)
    print(json.dumps(dataclasses.asdict(made), indent=2, ensure_ascii=False) if as_json
          else describe(job=job, plan=made))
    return EXIT_OK


def _job(path: Path, simulate: bool) -> Job:
    """The job file's job; with `simulate`, the store that --simulate runs keep apart."""
    job = load_job(path)
    return kept_apart(job) if simulate else job


def _hint(job: Job, simulate: bool) -> str:
    """When only a simulated run has answers, say where they are (a new user's first run is one)."""
    apart = kept_apart(job).state.path
    if simulate or job.state.path.exists() or not apart.exists():
        return ""
    return f" (a --simulate run's answers are kept apart, in {apart}: add --simulate to see them)"


def status(path: Path, *, as_json: bool, simulate: bool = False) -> int:
    job = _job(path, simulate)
    info = job_status(job)
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{path}: {info['rows']} rows — {info['answered']} answered, "
          f"{info['failed_permanent']} failed (permanent), {info['failed_retryable']} failed (retried next "
          f"run), {info['invalid_rows']} invalid input rows, {info['pending']} pending"
          + (f" ({info['in_batches']} of them in Batch API batches not collected yet)" if info["in_batches"]
             else ""))
    print(f"state: {info['state']} ({int(str(info['state_bytes'])) / 1e6:.2f} MB)")
    if hint := _hint(job, simulate):
        print(hint.strip(" ()"))
    last = info["last_run"]
    if isinstance(last, dict):
        print(f"last run: {last.get('status')}, {last.get('rows_ok')} ok / {last.get('rows_failed')} failed, "
              f"{last.get('requests_sent')} requests"
              + (f" + {last.get('batch_requests')} in Batch API batches" if last.get("mode") == "batch"
                 else "")
              + f", {last.get('elapsed_s')} s, "
              f"estimated cost ${last.get('estimated_cost_usd')}")
    batches = info["batches"]
    if isinstance(batches, list) and batches:
        print(f"Batch API batches ({len(batches)}):")
        for b in batches:
            counts = b.get("counts") or {}
            print(f"  {b.get('batch_id') or '(not submitted)'}\t{b.get('status')}\t"
                  f"{counts.get('completed', 0)}/{b.get('lines')} answered, {counts.get('failed', 0)} failed"
                  f"\t{'merged' if b.get('merged') else 'open'}\t{b.get('file')}")
    return EXIT_OK


def report(path: Path, *, html: Path | None, as_json: bool, simulate: bool = False) -> int:
    """The HTML report of the job's last run, drawn again from its store; its path, or the figures."""
    job = _job(path, simulate)
    if not job.state.path.exists():
        raise JobError(f"{path}: this job has not run yet (no state at {job.state.path}); nothing to "
                       f"report{_hint(job, simulate)}")
    store = Store(job.state.path, readonly=True)
    try:
        data = report_data(job, store)
    finally:
        store.close()
    target = html or html_path(job)
    written = write_html(data, target)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif written:
        print(target)
    return EXIT_OK if written else EXIT_ROWS_FAILED


def simulate(args: argparse.Namespace) -> int:
    try:
        asyncio.run(sim.serve(sim.config_from_args(args), args.host, args.port))
    except ValueError as exc:  # an option out of range, or a host that is not loopback
        log.error("simulate: %s", exc)
        return JobError.exit_code
    except OSError as exc:  # the port is taken, the address cannot be bound
        log.error("simulate: cannot listen on %s port %s: %s", args.host, args.port, exc.strerror or exc)
        return JobError.exit_code
    except KeyboardInterrupt:
        pass
    return EXIT_OK


async def models(base_url: str | None, *, simulate: bool) -> int:
    if simulate:
        server = sim.Simulator()
        url = await server.start()
        try:
            return await _list_models(url, SIMULATED_KEY)
        finally:
            await server.stop()
    url = endpoint.check_base_url(endpoint.resolve_base_url(base_url, None, os.environ))
    return await _list_models(url, endpoint.api_key(url, os.environ))


async def cancel(path: Path, base_url: str | None) -> int:
    job = load_job(path)
    url = endpoint.check_base_url(endpoint.resolve_base_url(base_url, job, os.environ))
    async with Client(url, endpoint.api_key(url, os.environ), timeout_s=60, connections=2) as client:
        done = await cancel_batches(BatchApi(client), job.state.path)
    if not done:
        print(f"{path}: no batch of this job is running at the Batch API; nothing to cancel")
    for batch_id, outcome in done:
        print(f"{batch_id}\t{outcome}")
    if done:
        print("run the job again to collect what the cancelled batches answered", file=sys.stderr)
    return EXIT_ROWS_FAILED if any(o.startswith("not cancelled") for _, o in done) else EXIT_OK


async def _list_models(url: str, key: str | None) -> int:
    async with Client(url, key, timeout_s=30, connections=1) as client:
        models = await client.models()
    for m in sorted(models, key=lambda m: str(m.get("id"))):
        ctx, most = m.get("context_window"), m.get("max_completion_tokens")
        details = [f"context {ctx:,}" if isinstance(ctx, int) else "",
                   f"max completion {most:,}" if isinstance(most, int) else ""]
        print("\t".join([str(m.get("id")), *filter(None, details)]))
    return EXIT_OK
