"""Nightly batch prediction: score every new returns photo under ``incoming/`` exactly once per champion.

Usage:
    python -m batch_prediction.batch_predict [--input-prefix incoming/] [--batch-size 1024] [--workers 2]
        [--engine local|ray] [--rescore] [--max-failure-rate 0.05] [--lock-file PATH]
    python -m batch_prediction.batch_predict --print-crontab [--schedule "0 0 * * *"] [--log-file PATH]

In-process and streaming: list -> read + preprocess (worker processes, THE preprocessing function) -> one
predict call per batch (the API's fast inference path) -> per-batch Parquet + CSV parts, committed in a
ledger in the store. Inputs are never deleted. A killed run is continued by the next invocation; a finished
night rerun scores nothing; ``--rescore`` scores everything again with the current champion.
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
from pathlib import Path

from common.cli import positive_int, unit_interval
from common.logging import setup_logging
from common.settings import Settings
from common.tracking import bound_registry_calls

log = logging.getLogger("batch_prediction")

EXIT_OK, EXIT_FAILURE_RATE, EXIT_USAGE, EXIT_NO_MODEL, EXIT_SOFTWARE, EXIT_LOCKED = 0, 1, 2, 3, 70, 75


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batch_predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 failure rate exceeded, 2 usage, 3 no model, 70 unexpected error, 75 locked.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--input-prefix",
        default=os.environ.get("BATCH_INPUT_PREFIX", "incoming/"),
        help="store prefix holding the night's photos (env BATCH_INPUT_PREFIX; default incoming/)",
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
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="scoring engine (ray: Ray Data)")
    p.add_argument(
        "--ray-num-cpus", type=positive_int, default=2, help="CPUs of a local Ray (ignored with RAY_ADDRESS)"
    )
    p.add_argument("--rescore", action="store_true", help="score every input again with the current champion")
    p.add_argument(
        "--max-failure-rate",
        type=unit_interval,
        default=0.05,
        help="exit 1 when more than this share of the night's images cannot be scored (default 0.05)",
    )
    p.add_argument("--date", help="the night's date for the output folder (YYYY-MM-DD; default today, UTC)")
    p.add_argument("--lock-file", help="lock against overlapping runs (default <DATA_DIR>/batch_predict.lock)")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.verbose)
    try:
        settings = Settings.from_env().with_overrides(
            storage_uri=args.storage_uri,
            mlflow_tracking_uri=args.tracking_uri,
            model_uri=args.model_uri,
            review_threshold=args.review_threshold,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if args.date and not _valid_date(args.date):
        log.error("--date must be YYYY-MM-DD, got %r", args.date)
        return EXIT_USAGE

    if args.print_crontab:
        from batch_prediction.cron import crontab_line, strip_cron_args

        try:
            print(
                crontab_line(settings, schedule=args.schedule, log_file=args.log_file, job_args=strip_cron_args(argv))
            )
        except ValueError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        return EXIT_OK

    # The lock comes first, before any heavy import: a second launch exits at once.
    from filelock import FileLock, Timeout

    lock_path = Path(args.lock_file) if args.lock_file else Path(settings.data_dir) / "batch_predict.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        log.error("another batch run holds %s; exiting (75)", lock_path)
        return EXIT_LOCKED
    try:
        log.info("lock acquired: %s", lock_path)
        # A nightly job says "no model" at once (exit 3) and lets the next night try again.
        bound_registry_calls(timeout_seconds=20)
        return _run(args, settings)
    except Exception:
        from common.redact import redact

        log.error("batch run failed; the next run continues where this one stopped\n%s", redact(traceback.format_exc()))
        return EXIT_SOFTWARE
    finally:
        lock.release()


def _valid_date(text: str) -> bool:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from batch_prediction.night import NightOptions, run_night
    from batch_prediction.tracking import NightTracker
    from common.storage import storage_from_settings

    storage = storage_from_settings(settings)
    options = NightOptions(
        input_prefix=args.input_prefix,
        batch_size=args.batch_size,
        rescore=args.rescore,
        max_failure_rate=args.max_failure_rate,
        date=args.date,
        engine=args.engine,
        drift_sample=args.drift_sample,
        experiment=args.experiment,
    )
    try:
        model, make_engine = _engine_factory(args, settings, storage)
    except NoModel as exc:
        from common.redact import redact

        log.error("%s (exit 3; nothing was started)", redact(str(exc)))
        return EXIT_NO_MODEL
    tracker = NightTracker(settings.mlflow_tracking_uri, args.experiment)
    try:
        result = run_night(settings, options, storage=storage, model=model, make_engine=make_engine, tracker=tracker)
    except BaseException as exc:  # not left RUNNING: FAILED on an error, KILLED on an interrupt (resumed next time)
        with contextlib.suppress(Exception):
            tracker.abort(killed=not isinstance(exc, Exception))
        raise
    if result.exit_code == EXIT_FAILURE_RATE:
        log.error(
            "failure rate %.3f exceeds --max-failure-rate %.3f; see %s/quarantine.csv",
            result.summary["failure_rate"],
            args.max_failure_rate,
            result.output_uri,
        )
    return result.exit_code


class NoModel(RuntimeError):
    """The champion cannot be resolved or loaded (or its engine cannot run)."""


def no_model_message(settings: Settings, exc: BaseException) -> str:
    """A short, clear reason the model could not be had: the registry's state first, the client's words last
    (one line, shortened; the caller redacts credentials)."""
    text = " ".join(str(exc).split())
    status = next(
        (
            code
            for code in ("429", "500", "502", "503", "504")
            if f"{code} " in text
            or f"'{code}'" in text
            or f"status code {code}" in text
            or f"HTTP {code}" in text
            or f"{code} error" in text
        ),
        None,
    )
    if status is not None:
        what = f"the model registry at {settings.mlflow_tracking_uri} answered HTTP {status}"
    elif any(
        m in text
        for m in (
            "Max retries exceeded",
            "Connection refused",
            "ConnectionError",
            "timed out",
            "Name or service not known",
            "Failed to establish",
        )
    ):
        what = f"the model registry at {settings.mlflow_tracking_uri} is unreachable"
    else:
        what = f"cannot load {settings.model_uri} from {settings.mlflow_tracking_uri}"
    return f"{what}: {type(exc).__name__}: {text[:300]}"


def _engine_factory(args, settings, storage):
    from inference.loading import load_predictor
    from inference.models import resolve_model

    if args.engine == "ray":
        from batch_prediction.engines.ray_engine import RayEngine, RayUnavailable, _import_ray

        try:
            _import_ray()
            model = resolve_model(settings.model_uri, settings.mlflow_tracking_uri)
        except RayUnavailable as exc:
            raise NoModel(str(exc)) from exc
        except Exception as exc:
            raise NoModel(no_model_message(settings, exc)) from exc
        pinned = model.pinned_uri

        def make_ray(_model):
            return RayEngine(
                storage_uri=settings.storage_uri,
                endpoint_url=settings.aws_endpoint_url,
                model_uri=pinned,
                tracking_uri=settings.mlflow_tracking_uri,
                num_cpus=args.ray_num_cpus,
            )

        return model, make_ray

    from batch_prediction.engines.local import LocalEngine

    try:
        predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri, threads=args.inference_threads)
        predictor.warm_up()
    except Exception as exc:
        raise NoModel(no_model_message(settings, exc)) from exc
    log.info("model %s v%s loaded (runtime %s)", predictor.info.name, predictor.info.version, predictor.runtime_name)

    def make_local(_model):
        return LocalEngine(
            storage,
            predictor,
            storage_uri=settings.storage_uri,
            endpoint_url=settings.aws_endpoint_url,
            workers=args.workers,
        )

    return predictor.info, make_local


if __name__ == "__main__":
    raise SystemExit(main())
