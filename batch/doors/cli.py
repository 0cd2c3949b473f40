"""Command line: argv, logging, exit codes, asyncio.run — nothing else (`drive` heeds the signals).

Exit codes: 0 every row answered; 1 finished, some rows failed; 2 the job or input is invalid
(nothing was sent); 3 stopped early, resumable; 4 a fatal API condition (bad key, model gone).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from batch import sim
from batch.dataset.local import PartitionedRun
from batch.doors import commands, watching
from batch.doors.simulated import endpoint_for, kept_apart
from batch.engine.drive import Runner, drive
from batch.engine.preflight import check_job
from batch.engine.run import Run, RunOptions
from batch.errors import EXIT_OK, EXIT_ROWS_FAILED, BatchError, FatalApiError, JobError, Stopped
from batch.job.checks import valid_cluster
from batch.job.config import Job, load_job
from batch.job.endpoint import Endpoint
from batch.job.watch import watch_of
from batch.report.logs import say, stderr_handler
from batch.report.metrics import MetricsFile
from batch.report.summary import Summary
from batch.send.client import MIN_SECRET
from batch.tables.source import Rows, arrow_without_pandas

log = logging.getLogger("batch")

def _parser(simulate_options: bool = True) -> argparse.ArgumentParser:
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
    run.add_argument("--cluster", metavar="ADDRESS",
                     help="run on Dask (overrides [run] cluster): tcp://HOST:PORT of a scheduler, or local / "
                          "local:N worker processes on this machine")
    run.add_argument("--metrics-file", type=Path, metavar="PATH",
                     help="overrides [run] metrics-file: a Prometheus textfile of the run (see Monitoring)")
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
    st.add_argument("--simulate", action="store_true", help="the answers of --simulate runs (kept apart)")
    _verbosity(st)

    rp = sub.add_parser("report", help="write the HTML report of the job's last run again (sends nothing)")
    rp.add_argument("job", type=Path, help="the job file (TOML)")
    rp.add_argument("--html", type=Path, metavar="PATH",
                    help="where to write it (default: beside the output, <output>.report.html)")
    rp.add_argument("--json", action="store_true", help="also print the report's figures as JSON")
    rp.add_argument("--simulate", action="store_true", help="the last --simulate run's report")
    _verbosity(rp)

    simp = sub.add_parser("simulate", help="serve the Groq simulator for your own tests and demos")
    if simulate_options:  # they come with the simulator's server: loaded only for `simulate`
        sim.add_cli_arguments(simp)
    _verbosity(simp)

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
    p.add_argument("--log-format", choices=("text", "json"),
                   help="overrides [run] log-format: text lines, or one JSON object a line on stderr")


def _logging(args: argparse.Namespace) -> None:
    verbose, quiet, job = args.verbose, args.quiet, getattr(args, "job", None)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # The job file's [run] log-format, read even from a job that will be refused, so that every line
    # of a run is in one format; a key long enough to be a secret is blotted out of every line.
    args.log_format = args.log_format or (watch_of(job).log_format if job is not None else "text")
    key = os.environ.get("GROQ_API_KEY") or ""
    root = logging.getLogger("batch")
    root.handlers[:] = [stderr_handler(args.log_format, job.stem if job is not None else "",
                                       key if len(key) >= MIN_SECRET else None)]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `python -m batch plan JOB | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = _parser(simulate_options="simulate" in given).parse_args(given)
    _logging(args)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "simulate":
            return commands.simulate(args)
        if args.command == "status":
            return commands.status(args.job, as_json=args.json, simulate=args.simulate)
        if args.command == "plan":
            return commands.plan(args.job, limit=args.limit, mode=args.mode, as_json=args.json)
        if args.command == "report":
            return commands.report(args.job, html=args.html, as_json=args.json, simulate=args.simulate)
        if args.command == "cancel":
            return asyncio.run(commands.cancel(args.job, args.base_url))
        return asyncio.run(commands.models(args.base_url, simulate=args.simulate))
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
    """The run, and its metrics file finished whatever the end (`drive` finishes it for a run that
    started; here, for a job refused before it could)."""
    path = args.metrics_file.resolve() if args.metrics_file else watch_of(args.job).metrics_file
    metrics = MetricsFile(path, args.job.stem) if path is not None else None
    with watching.refused(metrics, args.job.stem):
        return _run_job(args, metrics)


def _run_job(args: argparse.Namespace, metrics: MetricsFile | None) -> int:
    with arrow_without_pandas():  # the command line never hands a table to pandas
        job = load_job(args.job)
        if args.cluster and not valid_cluster(args.cluster):
            raise JobError(f"--cluster: must be local, local:N or a scheduler address such as "
                           f"tcp://10.0.0.5:8786, got {args.cluster!r}")
        cluster = args.cluster or job.run.cluster
        # Everything about the job and its input, before a key is even looked for (a partitioned run
        # checks its partitions itself).
        rows = None if cluster is not None or job.input.dataset is not None else check_job(job)
        opts = RunOptions(limit=args.limit, retry_failed=args.retry_failed, mode=args.mode,
                          wait=not args.no_wait, progress=not args.quiet,
                          tty=sys.stderr.isatty() and args.log_format == "text")  # no bar among JSON

        async def main_task() -> int:
            async with endpoint_for(job, args.base_url, os.environ, simulate=args.simulate) as ep:
                run_job = kept_apart(job) if args.simulate else job
                return await _drive(_runner(run_job, rows, ep, opts, cluster), metrics)

        return asyncio.run(main_task())


def _runner(job: Job, rows: Rows | None, ep: Endpoint, opts: RunOptions, cluster: str | None) -> Runner:
    """One file (`rows`, checked), a partitioned input, or a partitioned input on a Dask cluster."""
    if cluster is not None:
        from batch.cluster.runner import ClusterRun  # Dask, only when a cluster is wanted
        return ClusterRun(job, ep, opts, cluster)
    return PartitionedRun(job, ep, opts) if rows is None else Run(job, rows, ep, opts)


async def _drive(run: Runner, metrics: MetricsFile | None) -> int:
    """The run to its end (signals stop it) and its summary on stderr, also when it stopped."""
    try:
        summary = await drive(run, signals=True, metrics=metrics)
    except BatchError:
        if run.summary is not None:  # what it did before it stopped (its report is written)
            _summary(run.summary)
        raise
    _summary(summary)
    return EXIT_OK if summary.rows_failed == 0 else EXIT_ROWS_FAILED


def _summary(summary: Summary) -> None:
    """The summary on stderr whatever the level: as text, or as a JSON line with the report's figures."""
    say(logging.getLogger("batch").handlers[0], summary.human(), summary=dataclasses.asdict(summary))
