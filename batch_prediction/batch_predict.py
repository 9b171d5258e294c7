"""Nightly batch prediction: score every new returns photo under ``incoming/`` exactly once per champion.

Usage:
    python -m batch_prediction.batch_predict [--input-prefix incoming/] [--batch-size 1024] [--workers 2]
        [--engine local|ray] [--rescore [all|PREFIX|FROM..TO]] [--max-failure-rate 0.05] [--lock-file PATH]
        [--create-store]
    python -m batch_prediction.batch_predict --print-crontab [--schedule "0 0 * * *"] [--log-file PATH]
    (also: ric batch ...)

In-process and streaming: check the store -> resolve the champion -> list -> read + preprocess (worker processes,
THE preprocessing function) -> one predict call per batch (the API's fast inference path) -> per-batch Parquet +
CSV parts, committed in a ledger in the store. Inputs are never deleted. A killed run is continued by the next
invocation; a night with nothing new writes nothing (no output folder, no MLflow run: one log line, and the model
is not even loaded), and a promotion does not score the history again: an input any version has scored is done.
``--rescore`` scores again with the current champion what it names (every input, a key prefix, or the nights
FROM..TO); items a person already saw are not listed for review again. One job per store at a time: the lock lives
in the store (S3: keyed by its URI on this machine), whatever folder the job starts from. Outputs go to
``<STORAGE_URI>/predictions/<YYYY-MM-DD>/<run-id>/``; ``predictions/LATEST`` names the last night that scored
something (see docs/batch.md). A store or input prefix that does not exist is a usage error (a typo in a crontab
line must not give green empty nights forever), checked before the lock (which lives in the store);
``--create-store`` creates them on purpose.

Exit codes:
    0   the night is scored, or there was nothing new (one log line, nothing written)
    1   the night is scored but the share of unreadable images exceeded --max-failure-rate (see quarantine.csv)
    2   usage error: a bad flag or setting, an invalid --schedule, or the store or its input prefix does not exist
    3   no model: the champion (MODEL_URI) cannot be resolved or loaded (the registry is down or unreachable:
        MLflow's HTTP retries are bounded to seconds), or the engine is unavailable (Ray)
    4   the store cannot be used (unreachable, access denied, no credentials: one line saying what to check); the
        next run continues where this one stopped
    70  unexpected error (traceback in the log); the next run continues where this one stopped
    75  another run holds the lock (EX_TEMPFAIL): exits at once, nothing done
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING

from batch_prediction.lock import Locked, night_locks
from batch_prediction.preflight import InputsMissing, check_inputs
from batch_prediction.rescore import valid_rescore_scope
from common.cli import (
    command_parser,
    fail,
    from_env,
    help_settings,
    non_negative_int,
    positive_int,
    read_settings,
    unit_interval,
)
from common.cron import DEFAULT_SCHEDULE, crontab_line, schedule_problems, strip_cron_args
from common.logging import setup_logging
from common.redact import redact
from common.settings import RUNTIME_CHOICES, Settings
from common.storage import is_storage_error, storage_from_settings
from common.storage_errors import storage_error_message

if TYPE_CHECKING:
    from batch_prediction.night_runs import NightTracker
    from common.storage import Storage

log = logging.getLogger("batch_prediction")

EXIT_OK, EXIT_FAILURE_RATE, EXIT_USAGE, EXIT_NO_MODEL, EXIT_STORE, EXIT_SOFTWARE, EXIT_LOCKED = 0, 1, 2, 3, 4, 70, 75
PROG = "ric batch"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; defaults come from the environment's settings."""
    env = settings or Settings()
    batch = env.batch
    p = command_parser("batch", __doc__)
    p.add_argument(
        "--input-prefix",
        default=batch.input_prefix,
        help="store prefix holding the night's photos ($BATCH_INPUT_PREFIX)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1024, help="images per predict call and output part")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(2, os.cpu_count() or 1),
        help="local engine: processes reading + preprocessing ahead of the model (0 = a thread in-process)",
    )
    p.add_argument(
        "--inference-threads",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="local engine: threads of the inference runtime (default: one per core, %(default)s here)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=batch.runtime,
        help="local engine: the inference runtime ($BATCH_RUNTIME): auto times every runtime the champion "
        "passed parity in, and the Keras graph, at --batch-size on this CPU and scores with the "
        "fastest",
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
        help="score again with the current champion: every input (no value, or 'all'), the inputs under a "
        "key prefix (incoming/2026-11-27/), or the nights FROM..TO (2026-11-01..2026-11-27); without it, "
        "an input any version has scored is never scored again",
    )
    p.add_argument(
        "--max-failure-rate",
        type=unit_interval,
        default=0.05,
        help="exit 1 when more than this share of the night's images cannot be scored",
    )
    p.add_argument("--date", help="the night's date for the output folder (YYYY-MM-DD; default today, UTC)")
    p.add_argument(
        "--lock-file",
        help="an extra lock file to hold as well (the store's own lock is always taken: "
        "<store>/.batch_predict.lock, or for S3 one keyed by the store's URI on this machine)",
    )
    p.add_argument("--drift-sample", type=positive_int, default=20_000, help="max items in the drift window")
    p.add_argument(
        "--create-store",
        action="store_true",
        help="create the store and the input prefix when they do not exist (default: exit 2, a typo "
        "must not give empty nights)",
    )
    _add_settings_flags(p, env)
    return p


def _add_settings_flags(p: argparse.ArgumentParser, env: Settings) -> None:
    """The flags that override settings (store, MLflow, model, thresholds), then those of --print-crontab."""
    p.add_argument("--storage-uri", help=f"the store (default {from_env(env, 'storage_uri')})")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default {from_env(env, 'mlflow_tracking_uri')})")
    p.add_argument("--model-uri", help=f"the model to score with (default {from_env(env, 'model_uri')})")
    threshold = from_env(env, "review_threshold")
    p.add_argument(
        "--review-threshold",
        type=unit_interval,
        help=f"confidence below which an item needs review (default {threshold})",
    )
    p.add_argument(
        "--unfamiliar-threshold",
        type=float,
        help="unfamiliarity above which an item is unfamiliar and needs review (default "
        f"{from_env(env, 'unfamiliar_threshold')})",
    )
    p.add_argument("--experiment", default="batch-predictions", help="MLflow experiment of the nightly runs")
    p.add_argument("--print-crontab", action="store_true", help="print the crontab line for this job and exit")
    p.add_argument(
        "--schedule",
        default=DEFAULT_SCHEDULE,
        help="cron schedule for --print-crontab (5 fields, or @daily and the like; checked)",
    )
    p.add_argument("--log-file", help="log file for --print-crontab (default <DATA_DIR>/logs/batch_predict.log)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def main(
    argv: list[str] | None = None,
    *,
    open_store: Callable[[Settings], Storage] | None = None,
    open_tracker: Callable[[str, str], NightTracker] | None = None,
) -> int:
    """Run the job with the command line ``argv``; returns its exit code (see the module docstring).

    ``open_store(settings)`` and ``open_tracker(tracking_uri, experiment)`` build the night's store and MLflow
    tracker (default: :func:`common.storage.storage_from_settings` and
    :class:`batch_prediction.night_runs.NightTracker`).
    A caller may pass wrappers: the crash tests' driver (``tests.support.crash_driver``) makes the process SIGKILL
    itself at a chosen write this way.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.print_crontab:
        return _print_crontab(args, settings, argv)
    # Before the lock, which lives in the store: taking it would create a mistyped store.
    if (code := _check_store(args, settings, open_store)) != EXIT_OK:
        return code
    # The locks come first: a second launch exits at once, before any heavy import (see _score_the_night).
    try:
        with night_locks(settings.storage_uri, settings.aws_endpoint_url, args.lock_file) as held:
            log.info("lock acquired: %s", ", ".join(redact(lock_file) for lock_file in held))
            try:
                return _score_the_night(args, settings, open_store=open_store, open_tracker=open_tracker)
            except Exception as exc:
                return _failed(exc, settings)
    except Locked as exc:
        log.error("another batch run holds %s; exiting (75)", redact(exc.lock_file))
        return EXIT_LOCKED
    return EXIT_SOFTWARE  # unreachable: the block returns


def _settings(args: argparse.Namespace) -> Settings | None:
    """The settings with the command line's overrides, or None (said in one line) when they or a flag are bad."""
    settings = read_settings(PROG, ("batch", "learning"))
    if settings is None:
        return None
    setup_logging(args.verbose, settings.log_level)
    settings = settings.with_overrides(
        storage_uri=args.storage_uri,
        mlflow_tracking_uri=args.tracking_uri,
        model_uri=args.model_uri,
        review_threshold=args.review_threshold,
        unfamiliar_threshold=args.unfamiliar_threshold,
    )
    if args.date and not _valid_date(args.date):
        fail(PROG, f"--date must be YYYY-MM-DD, got {args.date!r}")
        return None
    if args.rescore is not None and not valid_rescore_scope(args.rescore):
        fail(PROG, f"--rescore takes all, a key prefix or FROM..TO (two YYYY-MM-DD dates), got {args.rescore!r}")
        return None
    return settings


def _check_store(args: argparse.Namespace, settings: Settings, open_store: Callable[[Settings], Storage] | None) -> int:
    """EXIT_OK when the store and the input prefix exist (or ``--create-store`` made them); else the exit code,
    said in one line (:mod:`batch_prediction.preflight`)."""
    try:
        check_inputs((open_store or storage_from_settings)(settings), args.input_prefix, create=args.create_store)
    except InputsMissing as exc:
        fail(PROG, f"{exc} (exit 2; nothing was started)")
        return EXIT_USAGE
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        fail(PROG, f"{storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url)} (exit 4)")
        return EXIT_STORE
    return EXIT_OK


def _failed(exc: Exception, settings: Settings) -> int:
    """The exit code of a night stopped by ``exc``, said in one line for the store's own failures."""
    if is_storage_error(exc):  # the store itself: one line with what to check, never botocore's traceback
        message = storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url)
        fail(PROG, f"{message} (exit 4; the next run continues where this one stopped)")
        return EXIT_STORE
    log.error("batch run failed; the next run continues where this one stopped\n%s", redact(traceback.format_exc()))
    return EXIT_SOFTWARE


def _print_crontab(args: argparse.Namespace, settings: Settings, argv: list[str]) -> int:
    problems = schedule_problems(args.schedule)
    if problems:
        fail(PROG, f"--schedule {args.schedule!r} is not a valid cron schedule: {'; '.join(problems)}")
        return EXIT_USAGE
    job_args = strip_cron_args(argv)
    print(crontab_line(settings, schedule=args.schedule, log_file=args.log_file, job_args=job_args))
    return EXIT_OK


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
        fail(PROG, f"{exc} (exit 3; nothing was started)")
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
