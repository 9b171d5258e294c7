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
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command_parser, explain, fail, from_env, help_settings, read_settings
from common.logging import setup_logging
from common.settings import Settings
from monitoring import shifts
from monitoring.drift import DriftConfig, drift_verdict, evaluate_drift
from monitoring.features import item_features
from monitoring.reference import Reference

log = logging.getLogger("monitoring.evaluate_drift")

Features = dict[str, np.ndarray]
WindowDrawer = Callable[[np.random.Generator, int], Features]
DEFAULT_SIZES = (25, 50, 100, 200, 300, 500, 1000)
EXIT_OK, EXIT_MISSED, EXIT_USAGE, EXIT_INPUTS = 0, 1, 2, 3
PROG = "ric drift-eval"
EXPERIMENT_DESCRIPTION = (
    "Measurements of the drift detector (monitoring/evaluate_drift.py, make drift-eval): per model version, the "
    "false-alarm rate over in-distribution windows and the power for each kind of shift."
)


# --- functional core: windows, rates, the search for the smallest window ------------------------------------


def take(features: Features, idx: np.ndarray) -> Features:
    return {k: v[idx] for k, v in features.items()}


def concat(parts: Sequence[Features]) -> Features:
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts]) for k in sorted(keys)}


def pool_size(features: Features) -> int:
    return int(next(iter(features.values())).shape[0])


def draw_from(pool: Features) -> WindowDrawer:
    """Windows of n items drawn without replacement from one (possibly shifted) pool."""
    size = pool_size(pool)

    def draw(rng: np.random.Generator, n: int) -> Features:
        return take(pool, rng.choice(size, size=n, replace=n > size))

    return draw


def draw_mixture(clean: Features, shifted: Features, fraction: float) -> WindowDrawer:
    """Windows with ``round(fraction * n)`` items from ``shifted`` and the rest from ``clean``."""
    n_clean, n_shift = pool_size(clean), pool_size(shifted)

    def draw(rng: np.random.Generator, n: int) -> Features:
        k = round(fraction * n)
        a = take(clean, rng.choice(n_clean, size=n - k, replace=n - k > n_clean))
        b = take(shifted, rng.choice(n_shift, size=k, replace=k > n_shift))
        return concat([a, b])

    return draw


def draw_class_subset(clean: Features, labels: np.ndarray, n_classes: int = 3) -> WindowDrawer:
    """Class-prior shift: each window holds items of only ``n_classes`` randomly chosen true classes."""

    def draw(rng: np.random.Generator, n: int) -> Features:
        return take(clean, shifts.class_subset_indices(labels, n, rng, n_classes=n_classes))

    return draw


def detection_rate(
    reference: Reference, draw: WindowDrawer, n: int, n_windows: int, config: DriftConfig, rng: np.random.Generator
) -> float:
    """Share of ``n_windows`` windows of ``n`` items whose verdict is ``drift``."""
    hits = sum(drift_verdict(reference, draw(rng, n), config) for _ in range(n_windows))
    return hits / n_windows


@dataclass
class ShiftResult:
    name: str
    description: str
    power: float  # at the target window size
    min_window: int | None  # smallest searched size with power >= target (None: not reached)
    power_by_size: dict[int, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    window_size: int
    alpha: float
    n_tests: int
    null_windows: int
    power_windows: int
    null_windows_search: int | None
    false_alarm_rate: float  # at window_size
    false_alarm_by_size: dict[int, float]
    shifts: list[ShiftResult]
    max_false_alarm: float
    min_power: float
    reference_size: int = 0
    pool_size: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def false_alarm_ok(self) -> bool:
        return self.false_alarm_rate <= self.max_false_alarm

    @property
    def all_met(self) -> bool:
        return self.false_alarm_ok and all(s.power >= self.min_power for s in self.shifts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["all_met"] = self.all_met
        return d


def evaluate_detector(
    reference: Reference,
    null_draw: WindowDrawer,
    shift_draws: dict[str, tuple[str, WindowDrawer]],
    *,
    config: DriftConfig,
    sizes: Sequence[int] = DEFAULT_SIZES,
    null_windows: int = 500,
    power_windows: int = 200,
    null_windows_search: int | None = None,
    max_false_alarm: float = 0.06,
    min_power: float = 0.9,
    seed: int = 0,
) -> Evaluation:
    """False-alarm rate (at every size >= min_window), power at ``config.window_size`` and the smallest size
    reaching ``min_power`` for each shift. Each (shift, size) cell uses its own seeded generator."""
    sizes = sorted(set(sizes) | {config.window_size})
    # The search asks how small a window *could* be, so it runs the tests below the serving min_window too
    # (the false-alarm rate is measured at every searched size, so calibration there is visible as well).
    config = replace(config, min_window=min(config.min_window, sizes[0]))
    scored = sizes

    def rng_for(*key: object) -> np.random.Generator:
        # crc32, not hash(): str hashes are salted per process, which would break reproducibility.
        return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in key)])

    per_size = null_windows if null_windows_search is None else null_windows_search
    far = {
        n: detection_rate(
            reference, null_draw, n, null_windows if n == config.window_size else per_size, config, rng_for("null", n)
        )
        for n in scored
    }
    n_tests = len(evaluate_drift(reference, null_draw(rng_for("probe"), config.window_size), config).tests)
    results: list[ShiftResult] = []
    for name, (description, draw) in shift_draws.items():
        by_size: dict[int, float] = {}
        by_size[config.window_size] = detection_rate(
            reference, draw, config.window_size, power_windows, config, rng_for(name, config.window_size)
        )
        min_n: int | None = None
        for n in scored:  # ascending; power grows with n, so stop at the first size that reaches the target
            if n not in by_size:
                by_size[n] = detection_rate(reference, draw, n, power_windows, config, rng_for(name, n))
            if by_size[n] >= min_power:
                min_n = n
                break
        results.append(
            ShiftResult(name, description, by_size[config.window_size], min_n, dict(sorted(by_size.items())))
        )
        log.info("%s: power@%d=%.3f min_window=%s", name, config.window_size, by_size[config.window_size], min_n)
    return Evaluation(
        window_size=config.window_size,
        alpha=config.alpha,
        n_tests=n_tests,
        null_windows=null_windows,
        power_windows=power_windows,
        null_windows_search=null_windows_search,
        false_alarm_rate=far[config.window_size],
        false_alarm_by_size=far,
        shifts=results,
        max_false_alarm=max_false_alarm,
        min_power=min_power,
        reference_size=len(reference),
    )


def format_table(ev: Evaluation) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:5.1f} %"

    lines = [
        f"Drift detector evaluation  (alpha {ev.alpha:g} family-wise, Bonferroni over {ev.n_tests} tests; "
        f"reference {ev.reference_size} items, test pool {ev.pool_size} items)",
    ]
    if ev.meta:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in ev.meta.items()))
    lines.append("")
    verdict = "OK" if ev.false_alarm_ok else "MISSED"
    lines.append(
        f"false-alarm rate at n={ev.window_size}: {pct(ev.false_alarm_rate)} over {ev.null_windows} in-distribution "
        f"windows (target <= {pct(ev.max_false_alarm).strip()})  {verdict}"
    )
    lines.append(
        f"false-alarm rate by window size ({ev.null_windows_search or ev.null_windows} windows each, "
        f"{ev.null_windows} at n={ev.window_size}): "
        + ", ".join(f"n={n}: {pct(r).strip()}" for n, r in ev.false_alarm_by_size.items())
    )
    lines.append("")
    header = (
        f"{'shift':<44} {'power@' + str(ev.window_size):>10} {'min n for ' + pct(ev.min_power).strip():>16}  target"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for s in ev.shifts:
        min_n = str(s.min_window) if s.min_window is not None else "> max"
        ok = "OK" if s.power >= ev.min_power else "MISSED"
        lines.append(f"{s.description:<44} {pct(s.power):>10} {min_n:>16}  {ok}")
    lines.append("")
    lines.append(f"power estimated over {ev.power_windows} windows per (shift, size); all targets met: {ev.all_met}")
    return "\n".join(lines)


# --- shifted pools (need the model) -------------------------------------------------------------------------


def pool_features(predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 1000) -> Features:
    probs = np.concatenate([predict_proba(images[i : i + batch]) for i in range(0, images.shape[0], batch)])
    return item_features(images, probs)


SHIFT_DESCRIPTIONS = {
    "class_prior": "class prior: only 3 of 10 classes",
    "brightness_up": "brightness +0.1",
    "brightness_down": "brightness -0.1",
    "contrast": "contrast x0.75",
    "blur": "gaussian blur sigma=0.8 px",
    "noise": "gaussian noise sigma=0.05",
    "rotation": "rotation by a random +-15 deg",
    "inverted": "inverted polarity on 30 % of items",
    "ood": "30 % out-of-distribution (shapes, digits)",
}
MIXED_FRACTION = 0.3


def shifted_pools(
    predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray, seed: int, *, rotation_uniform: bool = False
) -> dict[str, Features]:
    """Features of the whole pool under each image shift (the model's probabilities recomputed once per shift).
    For ``inverted`` and ``ood`` this is the fully shifted pool; windows mix 30 % of it into clean items."""
    rng = np.random.default_rng([seed, 7])
    transforms: dict[str, Callable[[], np.ndarray]] = {
        "brightness_up": lambda: shifts.brightness(images, 0.1),
        "brightness_down": lambda: shifts.brightness(images, -0.1),
        "contrast": lambda: shifts.contrast(images, 0.75),
        "blur": lambda: shifts.gaussian_blur(images, 0.8),
        "noise": lambda: shifts.gaussian_noise(images, 0.05, rng),
        "rotation": lambda: shifts.rotation(images, 15.0, rng, uniform=rotation_uniform),
        "inverted": lambda: shifts.invert(images),
        "ood": lambda: shifts.ood_images(images.shape[0], rng),
    }
    pools: dict[str, Features] = {}
    for name, make in transforms.items():
        pools[name] = pool_features(predict_proba, make())
        log.info("computed the %s pool", name)
    return pools


def shift_draws(
    clean: Features, labels: np.ndarray, pools: dict[str, Features], *, rotation_uniform: bool = False
) -> dict[str, tuple[str, WindowDrawer]]:
    """The issue's shifts at their stated severities, each as a window drawer over precomputed features."""
    out: dict[str, tuple[str, WindowDrawer]] = {
        "class_prior": (SHIFT_DESCRIPTIONS["class_prior"], draw_class_subset(clean, labels, 3))
    }
    for name, feats in pools.items():
        desc = SHIFT_DESCRIPTIONS.get(name, name)
        if name == "rotation" and rotation_uniform:
            desc = "rotation by U(-15, 15) deg"
        if name in ("inverted", "ood"):
            out[name] = (desc, draw_mixture(clean, feats, MIXED_FRACTION))
        else:
            out[name] = (desc, draw_from(feats))
    return out


# --- I/O shell ----------------------------------------------------------------------------------------------


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


def log_to_mlflow(ev: Evaluation, table: str, tracking_uri: str, experiment: str, params: dict[str, Any]) -> str:
    import mlflow

    from common.tracking import NOTE, ensure_experiment

    exp_id = ensure_experiment(experiment, tracking_uri, EXPERIMENT_DESCRIPTION)
    model = ev.meta.get("model", "the model")
    met = "every target met" if ev.all_met else "a target missed"
    note = (
        f"The drift detector on {model}: false-alarm rate {ev.false_alarm_rate:.1%} over in-distribution windows, "
        f"power per shift {', '.join(f'{s.name} {s.power:.0%}' for s in ev.shifts)}; {met}."
    )
    with mlflow.start_run(experiment_id=exp_id, run_name=f"drift-eval {model}", tags={NOTE: note}) as run:
        mlflow.log_params(params)
        mlflow.log_metric("false_alarm_rate", ev.false_alarm_rate)
        for n, r in ev.false_alarm_by_size.items():
            mlflow.log_metric(f"false_alarm_rate_n{n}", r)
        for s in ev.shifts:
            mlflow.log_metric(f"power_{s.name}", s.power)
            if s.min_window is not None:
                mlflow.log_metric(f"min_window_{s.name}", s.min_window)
        mlflow.log_metric("all_targets_met", float(ev.all_met))
        mlflow.set_tags({k: str(v) for k, v in ev.meta.items()})
        mlflow.log_text(table, "drift_evaluation.txt")
        mlflow.log_dict(ev.to_dict(), "drift_evaluation.json")
        return run.info.run_id


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
    config = DriftConfig(alpha=args.alpha, min_window=args.min_window, window_size=args.window_size)

    from common.storage import ObjectNotFound, storage_from_settings
    from data_processing.dataset import load_split
    from inference.choice import BATCH
    from inference.loading import load_predictor
    from monitoring.reference import load_reference_for_version

    try:
        predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri, path=BATCH)
        info = predictor.info
        if args.reference is not None:
            reference = Reference.load(args.reference)
        elif info.run_id is None:
            raise LookupError(f"{settings.model_uri} is not a registered model version: it has no drift reference")
        else:
            reference = load_reference_for_version(info.name, info.version, settings.mlflow_tracking_uri)
        test = load_split(storage_from_settings(settings), "test")
    except (ObjectNotFound, LookupError) as exc:
        fail(PROG, f"inputs unavailable: {exc}")
        return EXIT_INPUTS
    except Exception as exc:  # MLflow raises its own exception types for a missing model/alias/artifact
        fail(PROG, f"inputs unavailable: {explain(exc, settings)}")
        return EXIT_INPUTS

    log.info("model %s v%s, reference %d items, test pool %d items", info.name, info.version, len(reference), len(test))
    clean = pool_features(predictor.predict_proba, test.images)
    pools = shifted_pools(predictor.predict_proba, test.images, args.seed, rotation_uniform=args.rotation_uniform)
    draws = shift_draws(clean, test.labels, pools, rotation_uniform=args.rotation_uniform)
    ev = evaluate_detector(
        reference,
        draw_from(clean),
        draws,
        config=config,
        sizes=args.sizes,
        null_windows=args.null_windows,
        power_windows=args.power_windows,
        null_windows_search=args.null_windows_search,
        max_false_alarm=args.max_false_alarm,
        min_power=args.min_power,
        seed=args.seed,
    )
    ev.pool_size = len(test)
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
        params = {
            "model_uri": settings.model_uri,
            "model_version": info.version,
            "alpha": args.alpha,
            "window_size": args.window_size,
            "min_window": args.min_window,
            "null_windows": args.null_windows,
            "null_windows_search": args.null_windows_search,
            "power_windows": args.power_windows,
            "seed": args.seed,
            "rotation_uniform": args.rotation_uniform,
            "reference_size": len(reference),
            "pool_size": len(test),
        }
        run_id = log_to_mlflow(ev, table, settings.mlflow_tracking_uri, args.experiment, params)
        print(f"logged to MLflow run {run_id} (experiment {args.experiment})")
    return EXIT_OK if ev.all_met else EXIT_MISSED


if __name__ == "__main__":
    raise SystemExit(main())
