"""Nightly batch prediction: score every new returns photo under ``incoming/`` exactly once per champion.

Usage:
    python -m batch_prediction.batch_predict [--input-prefix incoming/] [--batch-size 1024] [--workers 2]
        [--engine local|ray] [--rescore [all|PREFIX|FROM..TO]] [--max-failure-rate 0.05] [--lock-file PATH]
    python -m batch_prediction.batch_predict --print-crontab [--schedule "0 0 * * *"] [--log-file PATH]

In-process and streaming: list -> read + preprocess (worker processes, THE preprocessing function) -> one
predict call per batch (the API's fast inference path) -> per-batch Parquet + CSV parts, committed in a
ledger in the store. Inputs are never deleted. A killed run is continued by the next invocation; a finished
night rerun scores nothing, and neither does a promotion score the history again: an input any version has scored
is done. ``--rescore`` scores again with the current champion what it names (every input, a key prefix, or the
nights FROM..TO); items a person already saw are not listed for review again. One job per store at a time: the
lock lives in the store (S3: keyed by its URI on this machine), whatever folder the job starts from.
Outputs go to ``<STORAGE_URI>/predictions/<YYYY-MM-DD>/<run-id>/`` (see docs/batch.md).

Exit codes:
    0   the night is scored (possibly nothing new)
    1   the night is scored but the share of unreadable images exceeded --max-failure-rate (see quarantine.csv)
    2   usage error
    3   no model: the champion (MODEL_URI) cannot be resolved or loaded (the registry is down or unreachable:
        MLflow's HTTP retries are bounded to a few seconds here), or the engine is unavailable (Ray)
    70  unexpected error (traceback in the log); the next run continues where this one stopped
    75  another run holds the lock (EX_TEMPFAIL): exits at once, nothing done
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from batch_prediction.cron import crontab_line, strip_cron_args
from batch_prediction.lock import store_lock
from batch_prediction.rescore import valid_rescore_scope
from common.cli import positive_int, unit_interval
from common.logging import setup_logging
from common.redact import redact
from common.settings import RUNTIME_CHOICES, BatchSettings, Settings
from common.tracking import bound_registry_calls

if TYPE_CHECKING:
    from batch_prediction.tracking import NightTracker
    from common.storage import Storage

log = logging.getLogger("batch_prediction")

EXIT_OK, EXIT_FAILURE_RATE, EXIT_USAGE, EXIT_NO_MODEL, EXIT_SOFTWARE, EXIT_LOCKED = 0, 1, 2, 3, 70, 75


def build_parser(batch: BatchSettings | None = None) -> argparse.ArgumentParser:
    """The command line; defaults come from the environment's settings (``batch``)."""
    batch = batch or BatchSettings()
    p = argparse.ArgumentParser(
        prog="batch_predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 failure rate exceeded, 2 usage, 3 no model, 70 unexpected error, 75 locked.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--input-prefix",
        default=batch.input_prefix,
        help=f"store prefix holding the night's photos (BATCH_INPUT_PREFIX, default {batch.input_prefix})",
    )
    p.add_argument("--batch-size", type=positive_int, default=1024, help="images per predict call and output part")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="local engine: processes reading + preprocessing ahead of the model (0 = a thread in-process)",
    )
    p.add_argument(
        "--inference-threads",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="local engine: threads of the inference runtime (default: one per core)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=batch.runtime,
        help=f"local engine: the inference runtime (BATCH_RUNTIME, default {batch.runtime}): auto times every runtime "
        "the champion passed parity in, and the Keras graph, at --batch-size on this CPU and scores with the fastest",
    )
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="scoring engine (ray: Ray Data)")
    p.add_argument(
        "--ray-num-cpus", type=positive_int, default=2, help="CPUs of a local Ray (ignored with RAY_ADDRESS)"
    )
    p.add_argument(
        "--rescore",
        nargs="?",
        const="all",
        metavar="all|PREFIX|FROM..TO",
        help="score again with the current champion: every input (no value, or 'all'), the inputs under a key "
        "prefix (incoming/2026-11-27/), or the nights FROM..TO (2026-11-01..2026-11-27); without it, an input "
        "any version has scored is never scored again",
    )
    p.add_argument(
        "--max-failure-rate",
        type=unit_interval,
        default=0.05,
        help="exit 1 when more than this share of the night's images cannot be scored (default 0.05)",
    )
    p.add_argument("--date", help="the night's date for the output folder (YYYY-MM-DD; default today, UTC)")
    p.add_argument(
        "--lock-file",
        help="an extra lock file to hold as well (the store's own lock is always taken: <store>/.batch_predict.lock, "
        "or for S3 one keyed by the store's URI on this machine)",
    )
    p.add_argument("--drift-sample", type=positive_int, default=20_000, help="max items in the drift window")
    p.add_argument("--storage-uri", help="override STORAGE_URI")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI")
    p.add_argument("--model-uri", help="override MODEL_URI (default models:/<MODEL_NAME>@champion)")
    p.add_argument("--review-threshold", type=unit_interval, help="override REVIEW_THRESHOLD")
    p.add_argument("--experiment", default="batch-predictions", help="MLflow experiment of the nightly runs")
    p.add_argument("--print-crontab", action="store_true", help="print the crontab line for this job and exit")
    p.add_argument("--schedule", default="0 0 * * *", help="cron schedule for --print-crontab (default midnight)")
    p.add_argument("--log-file", help="log file for --print-crontab (default <DATA_DIR>/logs/batch_predict.log)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(
    argv: list[str] | None = None,
    *,
    open_store: Callable[[Settings], Storage] | None = None,
    open_tracker: Callable[[str, str], NightTracker] | None = None,
) -> int:
    """Run the job with the command line ``argv``; returns its exit code (see the module docstring).

    ``open_store(settings)`` and ``open_tracker(tracking_uri, experiment)`` build the night's store and MLflow
    tracker (default: :func:`common.storage.storage_from_settings` and :class:`batch_prediction.tracking.NightTracker`).
    A caller may pass wrappers: the crash tests' driver (``tests.support.crash_driver``) makes the process SIGKILL
    itself at a chosen write this way.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser(settings.batch)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.verbose, settings.log_level)
    settings = settings.with_overrides(
        storage_uri=args.storage_uri,
        mlflow_tracking_uri=args.tracking_uri,
        model_uri=args.model_uri,
        review_threshold=args.review_threshold,
    )
    if args.date and not _valid_date(args.date):
        log.error("--date must be YYYY-MM-DD, got %r", args.date)
        return EXIT_USAGE
    if args.rescore is not None and not valid_rescore_scope(args.rescore):
        log.error("--rescore takes all, a key prefix or FROM..TO (two YYYY-MM-DD dates), got %r", args.rescore)
        return EXIT_USAGE

    if args.print_crontab:
        try:
            print(
                crontab_line(settings, schedule=args.schedule, log_file=args.log_file, job_args=strip_cron_args(argv))
            )
        except ValueError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        return EXIT_OK

    # The locks come first: a second launch exits at once, before any heavy import (see _score_the_night).
    locks = [store_lock(settings.storage_uri, settings.aws_endpoint_url)]
    if args.lock_file:
        Path(args.lock_file).parent.mkdir(parents=True, exist_ok=True)
        locks.append(FileLock(str(args.lock_file), timeout=0))
    with contextlib.ExitStack() as held:
        for lock in locks:
            try:
                lock.acquire()
            except Timeout:
                log.error("another batch run holds %s; exiting (75)", redact(lock.lock_file))
                return EXIT_LOCKED
            held.callback(lock.release)
        log.info("lock acquired: %s", ", ".join(redact(lock.lock_file) for lock in locks))
        try:
            # A nightly job says "no model" at once (exit 3) and lets the next night try again.
            bound_registry_calls(timeout_seconds=20)
            return _score_the_night(args, settings, open_store=open_store, open_tracker=open_tracker)
        except Exception:
            log.error(
                "batch run failed; the next run continues where this one stopped\n%s", redact(traceback.format_exc())
            )
            return EXIT_SOFTWARE
    return EXIT_SOFTWARE  # unreachable: the block returns


def _valid_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _score_the_night(
    args: argparse.Namespace,
    settings: Settings,
    *,
    open_store: Callable[[Settings], Storage] | None,
    open_tracker: Callable[[str, str], NightTracker] | None,
) -> int:
    # Imported here, after the lock, on purpose: a second launch must exit 75 at once. Importing the job's modules
    # (pyarrow, scipy through the drift tests, the inference runtimes) takes ~1.3 s on the 2-core machine, this
    # script's own imports ~0.1 s (`python -c "import ..."`, medians of 5 at load ~4, 2026-11-27).
    from batch_prediction import job
    from batch_prediction.night import NightOptions

    options = NightOptions(
        input_prefix=args.input_prefix,
        batch_size=args.batch_size,
        rescore=args.rescore is not None,
        rescore_scope="" if args.rescore in (None, "all") else args.rescore,
        max_failure_rate=args.max_failure_rate,
        date=args.date,
        engine=args.engine,
        drift_sample=args.drift_sample,
        experiment=args.experiment,
    )
    engine = job.EngineOptions(
        args.engine, args.workers, args.inference_threads, args.ray_num_cpus, args.runtime, args.batch_size
    )
    try:
        result = job.run(settings, options, engine, open_store=open_store, open_tracker=open_tracker)
    except job.NoModel as exc:
        log.error("%s (exit 3; nothing was started)", redact(str(exc)))
        return EXIT_NO_MODEL
    if result.exit_code == EXIT_FAILURE_RATE:
        log.error(
            "failure rate %.3f exceeds --max-failure-rate %.3f; see %s/quarantine.csv",
            result.summary["failure_rate"],
            args.max_failure_rate,
            result.output_uri,
        )
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
