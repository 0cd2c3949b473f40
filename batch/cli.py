"""Command line: argv, logging, signals, exit codes, asyncio.run — nothing else.

Exit codes: 0 every row answered; 1 finished, some rows failed; 2 the job or input is invalid
(nothing was sent); 3 stopped early, resumable; 4 a fatal API condition (bad key, model gone).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from . import simulator
from .batchmode import cancel
from .client import Client, check_base_url, is_loopback
from .config import Job, load_job, resolve_base_url
from .errors import BatchError, FatalApiError, JobError, Stopped
from .plan import describe, make_plan
from .preflight import SIMULATED_KEY
from .runner import Run, RunOptions, report_path
from .status import status

log = logging.getLogger("batch")

EXIT_OK, EXIT_ROWS_FAILED, EXIT_INVALID, EXIT_STOPPED, EXIT_FATAL = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m batch",
                                description="Run a prompt over every row of a table against Groq.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job (sends requests)")
    run.add_argument("job", type=Path, help="the job file (TOML)")
    run.add_argument("--limit", type=_positive, metavar="N", help="only the first N input rows")
    run.add_argument("--base-url", help="OpenAI-style base URL, e.g. http://127.0.0.1:8080/v1")
    run.add_argument("--simulate", action="store_true",
                     help="run against the built-in Groq simulator (no key, no network)")
    run.add_argument("--retry-failed", action="store_true",
                     help="also re-send rows whose earlier failure was permanent")
    run.add_argument("--mode", choices=("online", "batch"),
                     help="overrides [run] mode: online requests, or Groq's Batch API (half price)")
    run.add_argument("--no-wait", action="store_true",
                     help="batch mode: submit (or collect what is done), then exit 3 instead of waiting")
    _verbosity(run)

    cancel = sub.add_parser("cancel", help="cancel the job's Batch API batches that are still running")
    cancel.add_argument("job", type=Path, help="the job file (TOML)")
    cancel.add_argument("--base-url", help="OpenAI-style base URL")
    _verbosity(cancel)

    pl = sub.add_parser("plan", help="validate, preview requests, estimate tokens, cost and time "
                                     "(sends nothing)")
    pl.add_argument("job", type=Path, help="the job file (TOML)")
    pl.add_argument("--limit", type=_positive, metavar="N", help="only the first N input rows")
    pl.add_argument("--json", action="store_true", help="print JSON instead of text")
    pl.add_argument("--mode", choices=("online", "batch"), help="overrides [run] mode")
    _verbosity(pl)

    st = sub.add_parser("status", help="how far a job is: answered, failed, pending (sends nothing)")
    st.add_argument("job", type=Path, help="the job file (TOML)")
    st.add_argument("--json", action="store_true", help="print JSON instead of text")
    _verbosity(st)

    sim = sub.add_parser("simulate", help="serve the Groq simulator for your own tests and demos")
    simulator.add_cli_arguments(sim)
    _verbosity(sim)

    models = sub.add_parser("models", help="list the models the key can use")
    models.add_argument("--base-url", help="OpenAI-style base URL")
    models.add_argument("--simulate", action="store_true",
                        help="ask the built-in Groq simulator (no key, no network)")
    _verbosity(models)
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of rows, at least 1 (got {text!r})")
    return n


def _verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the summary")


def _logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s batch %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `python -m batch plan JOB | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    _logging(args.verbose, args.quiet)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "status":
            return _status(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "cancel":
            return asyncio.run(_cancel(args))
        return asyncio.run(_models(args))
    except BatchError as exc:
        return _fail(exc)


def _fail(exc: BatchError) -> int:
    if isinstance(exc, Stopped):
        log.warning("stopped: %s", exc)
    elif isinstance(exc, FatalApiError):
        hint = " Check GROQ_API_KEY (is it set to a valid key for this base URL?)." if exc.status in (
            401, 403) else ""
        log.error("the API refused the run: %s.%s Nothing more was sent; fix this and run again "
                  "(answers so far are saved).", exc, hint)
    else:
        log.error("%s", exc)
    return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    opts = RunOptions(limit=args.limit, base_url=args.base_url, simulate=args.simulate,
                      retry_failed=args.retry_failed, mode=args.mode, wait=not args.no_wait,
                      progress=not args.quiet, tty=sys.stderr.isatty())
    run = Run(job, opts)

    async def main_task() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signals = 0

        def on_signal(signame: str) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.warning("%s: finishing the requests in flight, then stopping (again to stop now)",
                            signame)
                run.interrupt()
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            summary = await run.execute()
        except asyncio.CancelledError:
            raise Stopped("stopped at once on a second signal; committed answers are saved. Run the same "
                          "command again to resume.") from None
        print(summary.human(), file=sys.stderr)
        return EXIT_OK if summary.rows_failed == 0 else EXIT_ROWS_FAILED

    try:
        return asyncio.run(main_task())
    except BatchError as exc:
        _report_stop(run, exc)
        return _fail(exc)


def _report_stop(run: Run, exc: BatchError) -> None:
    """A run that ended early still tells what it did, on stderr and in the report file."""
    if not isinstance(exc, Stopped | FatalApiError) or run.stats.requests == 0:
        return
    from .report import Summary

    status = "stopped" if isinstance(exc, Stopped) else "fatal"
    summary = Summary.build(run.stats, status=status, model=run.job.task.model, rows=0,
                            rows_ok=run.stats.answered, rows_failed=run.stats.failed, rows_from_store=0,
                            output=None, message=str(exc))
    print(summary.human(), file=sys.stderr)
    try:
        summary.write_json(report_path(run.job))
    except OSError as err:
        log.warning("could not write %s: %s", report_path(run.job), err)


def _plan(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    plan = make_plan(job, args.limit, args.mode)
    print(json.dumps(dataclasses.asdict(plan), indent=2, ensure_ascii=False) if args.json
          else describe(job=job, plan=plan))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    info = status(load_job(args.job))
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{args.job}: {info['rows']} rows — {info['answered']} answered, "
          f"{info['failed_permanent']} failed (permanent), {info['failed_retryable']} failed (retried next "
          f"run), {info['invalid_rows']} invalid input rows, {info['pending']} pending"
          + (f" ({info['in_batches']} of them in Batch API batches not collected yet)" if info["in_batches"]
             else ""))
    print(f"state: {info['state']} ({int(str(info['state_bytes'])) / 1e6:.2f} MB)")
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


def _simulate(args: argparse.Namespace) -> int:
    config = simulator.config_from_args(args)
    try:
        asyncio.run(simulator.serve(config, args.host, args.port))
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_INVALID
    except KeyboardInterrupt:
        pass
    return EXIT_OK


async def _models(args: argparse.Namespace) -> int:
    if args.simulate:
        sim = simulator.Simulator()
        url = await sim.start()
        try:
            return await _list_models(url, SIMULATED_KEY)
        finally:
            await sim.stop()
    url, key = _endpoint(args.base_url, None)
    return await _list_models(url, key)


def _endpoint(cli_url: str | None, job: Job | None) -> tuple[str, str | None]:
    env = dict(os.environ)
    url = check_base_url(resolve_base_url(cli_url, job, env))
    key = env.get("GROQ_API_KEY")
    if not key and not is_loopback(urlsplit(url).hostname or ""):
        raise JobError("GROQ_API_KEY is not set. Export your Groq API key (export GROQ_API_KEY=gsk_...)")
    return url, key


async def _cancel(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    url, key = _endpoint(args.base_url, job)
    async with Client(url, key, timeout_s=60, connections=2) as client:
        done = await cancel(client, job.state.path)
    if not done:
        print(f"{args.job}: no batch of this job is running at the Batch API; nothing to cancel")
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
