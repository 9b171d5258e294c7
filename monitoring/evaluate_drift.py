"""Measure the drift detector on a trained model: false-alarm rate, power per shift, smallest window.

Usage:
    python -m monitoring.evaluate_drift [--model-uri models:/refund-item-classifier@champion]
        [--null-windows 500] [--null-windows-search 200] [--power-windows 200]
        [--window-size 500] [--alpha 0.05] [--seed 0] [--log-mlflow] [--json PATH]
    (also: ric drift-eval ...)

The reference is the one logged with the model version (validation split); windows are drawn from the test
split, which the reference never saw. Each shift is applied once to the whole test pool (28x28 model images,
[0, 1], clipped), the model's probabilities are recomputed once per shifted pool, and windows are then
sampled from those precomputed features (fast). The class-prior shift draws each window from 3 random classes;
the inversion and out-of-distribution shifts replace 30 % of each window's items.

Exit codes:
    0  every target met (false-alarm rate <= --max-false-alarm, power at --window-size >= --min-power for each shift)
    1  at least one target missed
    2  usage error (bad flags or settings)
    3  inputs unavailable (model, its drift reference, or the test split; one line: what to check)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli import command_parser, explain, fail, from_env, help_settings, read_settings
from common.logging import setup_logging
from common.settings import Settings
from monitoring.drift import DriftConfig
from monitoring.drift_evaluation import (
    DEFAULT_SIZES,
    Evaluation,
    Targets,
    Trials,
    evaluate_model,
    format_table,
    log_evaluation,
)
from monitoring.reference import Reference

if TYPE_CHECKING:
    from data_processing.dataset import Split
    from inference.predictor import Predictor

log = logging.getLogger("monitoring.evaluate_drift")

EXIT_OK, EXIT_MISSED, EXIT_USAGE, EXIT_INPUTS = 0, 1, 2, 3
PROG = "ric drift-eval"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("drift-eval", __doc__)
    p.add_argument("--model-uri", help=f"model to evaluate (default {from_env(env, 'model_uri')})")
    p.add_argument(
        "--tracking-uri", help=f"MLflow tracking/registry URI (default {from_env(env, 'mlflow_tracking_uri')})"
    )
    p.add_argument("--storage-uri", help=f"store holding processed/test.npz (default {from_env(env, 'storage_uri')})")
    p.add_argument("--reference", type=Path, help="reference .npz file instead of the model version's own (dev only)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level")
    p.add_argument("--window-size", type=int, default=500, help="window size for the headline numbers")
    p.add_argument("--min-window", type=int, default=100, help="smaller windows are insufficient_data")
    p.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated window sizes searched for the smallest 90 %%-power window",
    )
    p.add_argument("--null-windows", type=int, default=500, help="in-distribution windows per size")
    p.add_argument(
        "--null-windows-search",
        type=int,
        default=200,
        help="in-distribution windows at each searched size other than --window-size",
    )
    p.add_argument("--power-windows", type=int, default=200, help="windows per (shift, size)")
    p.add_argument("--max-false-alarm", type=float, default=0.06, help="target: false-alarm rate at most this")
    p.add_argument("--min-power", type=float, default=0.9, help="target: power at --window-size at least this")
    p.add_argument("--rotation-uniform", action="store_true", help="rotate by U(-15, 15) deg instead of random +-15")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--log-mlflow", action="store_true", help="log the table and metrics to MLflow")
    p.add_argument("--experiment", default="drift-evaluation", help="MLflow experiment for --log-mlflow")
    p.add_argument("--json", type=Path, help="also write the full results as JSON to this path")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_args(argv: list[str] | None, settings: Settings | None = None) -> argparse.Namespace:
    """The parsed command line, with its cross-flag checks (argparse's exit 2 for a bad combination)."""
    p = build_parser(settings)
    args = p.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        DriftConfig(alpha=args.alpha, min_window=args.min_window, window_size=args.window_size)
    except ValueError as exc:
        p.error(str(exc))
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes must be positive integers")
    if min(args.null_windows, args.null_windows_search, args.power_windows) < 1:
        p.error("--null-windows, --null-windows-search and --power-windows must be >= 1")
    return args


def load_inputs(settings: Settings, reference_path: Path | None) -> tuple[Predictor, Reference, Split]:
    """The model (batch path), its drift reference (or the one at ``reference_path``) and the test split; raises
    what is missing (MLflow raises its own exception types for a missing model/alias/artifact)."""
    from common.storage import storage_from_settings
    from data_processing.dataset import load_split
    from inference.choice import BATCH
    from inference.loading import load_predictor
    from monitoring.reference import load_reference_for_version

    predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri, path=BATCH)
    info = predictor.info
    if reference_path is not None:
        reference = Reference.load(reference_path)
    elif info.run_id is None:
        raise LookupError(f"{settings.model_uri} is not a registered model version: it has no drift reference")
    else:
        reference = load_reference_for_version(info.name, info.version, settings.mlflow_tracking_uri)
    return predictor, reference, load_split(storage_from_settings(settings), "test")


def run_params(args: argparse.Namespace, settings: Settings, version: str, ev: Evaluation) -> dict[str, Any]:
    """The MLflow run's parameters: what was asked and what it was measured on."""
    return {
        "model_uri": settings.model_uri,
        "model_version": version,
        "alpha": args.alpha,
        "window_size": args.window_size,
        "min_window": args.min_window,
        "null_windows": args.null_windows,
        "null_windows_search": args.null_windows_search,
        "power_windows": args.power_windows,
        "seed": args.seed,
        "rotation_uniform": args.rotation_uniform,
        "reference_size": ev.reference_size,
        "pool_size": ev.pool_size,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv, help_settings())
    except SystemExit as exc:  # argparse: --help exits 0, errors exit 2
        return int(exc.code or 0)
    if (env := read_settings(PROG)) is None:
        return EXIT_USAGE
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(
        model_uri=args.model_uri, mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri
    )
    from common.storage import ObjectNotFound

    try:
        predictor, reference, test = load_inputs(settings, args.reference)
    except (ObjectNotFound, LookupError) as exc:
        fail(PROG, f"inputs unavailable: {exc}")
        return EXIT_INPUTS
    except Exception as exc:  # MLflow raises its own exception types for a missing model/alias/artifact
        fail(PROG, f"inputs unavailable: {explain(exc, settings)}")
        return EXIT_INPUTS
    info = predictor.info
    log.info("model %s v%s, reference %d items, test pool %d items", info.name, info.version, len(reference), len(test))
    ev = evaluate_model(
        predictor.predict_proba,
        test,
        reference,
        config=DriftConfig(alpha=args.alpha, min_window=args.min_window, window_size=args.window_size),
        trials=Trials(args.sizes, args.null_windows, args.power_windows, args.null_windows_search, args.seed),
        targets=Targets(args.max_false_alarm, args.min_power),
        rotation_uniform=args.rotation_uniform,
    )
    ev.meta = {
        "model": f"{info.name} v{info.version}",
        "reference": str(args.reference) if args.reference else f"run {info.run_id}",
        "seed": str(args.seed),
    }
    table = format_table(ev)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(ev.to_dict(), indent=2, default=str))
    if args.log_mlflow:
        params = run_params(args, settings, info.version, ev)
        run_id = log_evaluation(ev, table, settings.mlflow_tracking_uri, args.experiment, params)
        print(f"logged to MLflow run {run_id} (experiment {args.experiment})")
    return EXIT_OK if ev.all_met else EXIT_MISSED


if __name__ == "__main__":
    raise SystemExit(main())
