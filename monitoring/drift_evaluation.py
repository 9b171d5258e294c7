"""The drift detector's evaluation: windows drawn from precomputed features, false-alarm rate and power per shift,
the smallest window that catches each shift, the table and the MLflow run (the library of
``python -m monitoring.evaluate_drift``).

The reference is the one logged with the model version (validation split); windows are drawn from the test
split, which the reference never saw. Each shift is applied once to the whole test pool (28x28 model images,
[0, 1], clipped), the model's probabilities are recomputed once per shifted pool, and windows are then
sampled from those precomputed features (fast). The class-prior shift draws each window from 3 random classes;
the inversion and out-of-distribution shifts replace 30 % of each window's items.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring import shifts
from monitoring.drift import DriftConfig, drift_verdict, evaluate_drift
from monitoring.features import item_features
from monitoring.reference import Reference

if TYPE_CHECKING:
    from data_processing.dataset import Split

log = logging.getLogger("monitoring.evaluate_drift")  # the command's name in its log lines, as before

Features = dict[str, np.ndarray]
WindowDrawer = Callable[[np.random.Generator, int], Features]
DEFAULT_SIZES = (25, 50, 100, 200, 300, 500, 1000)
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


@dataclass(frozen=True)
class Trials:
    """How the detector is sampled: the window sizes searched (``window_size`` is always added), the windows per
    size (in-distribution at ``window_size``, at the other searched sizes, per (shift, size)) and the seed."""

    sizes: Sequence[int] = DEFAULT_SIZES
    null_windows: int = 500
    power_windows: int = 200
    null_windows_search: int | None = None  # None: null_windows at every size
    seed: int = 0

    def rng(self, *key: object) -> np.random.Generator:
        """The generator of one (shift, size) cell, independent of the others."""
        # crc32, not hash(): str hashes are salted per process, which would break reproducibility.
        return np.random.default_rng([self.seed, *(zlib.crc32(str(k).encode()) for k in key)])


@dataclass(frozen=True)
class Targets:
    """What the detector must reach: a false-alarm rate at most ``max_false_alarm``, power at least ``min_power``."""

    max_false_alarm: float = 0.06
    min_power: float = 0.9


def evaluate_detector(
    reference: Reference,
    null_draw: WindowDrawer,
    shift_draws: dict[str, tuple[str, WindowDrawer]],
    *,
    config: DriftConfig,
    trials: Trials = Trials(),
    targets: Targets = Targets(),
) -> Evaluation:
    """False-alarm rate (at every size >= min_window), power at ``config.window_size`` and the smallest size
    reaching ``targets.min_power`` for each shift. Each (shift, size) cell uses its own seeded generator."""
    sizes = _searched(trials, config)
    # The search asks how small a window *could* be, so it runs the tests below the serving min_window too
    # (the false-alarm rate is measured at every searched size, so calibration there is visible as well).
    config = replace(config, min_window=min(config.min_window, sizes[0]))
    per_size = trials.null_windows if trials.null_windows_search is None else trials.null_windows_search
    far = {
        n: detection_rate(
            reference,
            null_draw,
            n,
            trials.null_windows if n == config.window_size else per_size,
            config,
            trials.rng("null", n),
        )
        for n in sizes
    }
    n_tests = len(evaluate_drift(reference, null_draw(trials.rng("probe"), config.window_size), config).tests)
    results = [
        _shift_result(reference, name, shift, config=config, trials=trials, min_power=targets.min_power)
        for name, shift in shift_draws.items()
    ]
    return Evaluation(
        window_size=config.window_size,
        alpha=config.alpha,
        n_tests=n_tests,
        null_windows=trials.null_windows,
        power_windows=trials.power_windows,
        null_windows_search=trials.null_windows_search,
        false_alarm_rate=far[config.window_size],
        false_alarm_by_size=far,
        shifts=results,
        max_false_alarm=targets.max_false_alarm,
        min_power=targets.min_power,
        reference_size=len(reference),
    )


def _shift_result(
    reference: Reference,
    name: str,
    shift: tuple[str, WindowDrawer],
    *,
    config: DriftConfig,
    trials: Trials,
    min_power: float,
) -> ShiftResult:
    """Power at ``config.window_size`` and the smallest searched size reaching ``min_power`` for one shift."""
    description, draw = shift
    by_size: dict[int, float] = {}
    by_size[config.window_size] = detection_rate(
        reference, draw, config.window_size, trials.power_windows, config, trials.rng(name, config.window_size)
    )
    min_n: int | None = None
    for n in _searched(trials, config):  # ascending; power grows with n, so stop at the first size that reaches it
        if n not in by_size:
            by_size[n] = detection_rate(reference, draw, n, trials.power_windows, config, trials.rng(name, n))
        if by_size[n] >= min_power:
            min_n = n
            break
    log.info("%s: power@%d=%.3f min_window=%s", name, config.window_size, by_size[config.window_size], min_n)
    return ShiftResult(name, description, by_size[config.window_size], min_n, dict(sorted(by_size.items())))


def _searched(trials: Trials, config: DriftConfig) -> list[int]:
    """The window sizes searched, ascending: the trials' and ``config.window_size``."""
    return sorted(set(trials.sizes) | {config.window_size})


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


def evaluate_model(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    test: Split,
    reference: Reference,
    *,
    config: DriftConfig,
    trials: Trials = Trials(),
    targets: Targets = Targets(),
    rotation_uniform: bool = False,
) -> Evaluation:
    """The detector on a model: the test pool's features clean and under every shift (:func:`shifted_pools`), then
    :func:`evaluate_detector` against ``reference``."""
    clean = pool_features(predict_proba, test.images)
    pools = shifted_pools(predict_proba, test.images, trials.seed, rotation_uniform=rotation_uniform)
    draws = shift_draws(clean, test.labels, pools, rotation_uniform=rotation_uniform)
    ev = evaluate_detector(reference, draw_from(clean), draws, config=config, trials=trials, targets=targets)
    ev.pool_size = len(test)
    return ev


# --- MLflow -------------------------------------------------------------------------------------------------


def log_evaluation(ev: Evaluation, table: str, tracking_uri: str, experiment: str, params: dict[str, Any]) -> str:
    """Log ``ev`` (metrics, tags, the table and the JSON) as a run of ``experiment``; returns the run's id."""
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
