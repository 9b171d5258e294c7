"""Train the refund-item classifier on the processed splits, track everything in MLflow, register it.

Usage: python model_training/train.py [--epochs N] [--batch-size N] [--learning-rate LR] [--seed N]
                                      [--limit N] [--experiment NAME] [--arch ARCH] [--tta {none,shift5}]
                                      [--precision {float32,mixed_bfloat16}] [--ema-decay D]
                                      [--set KEY=VALUE ...] [--no-register] [--force-promote] [-v]

Reads ``processed/{train,val,test}.npz`` from the store (``STORAGE_URI``), trains with shift (and photo)
augmentation, label smoothing and a warm-up + cosine AdamW schedule, keeps the weights of the best validation
epoch (of their moving average with ``--ema-decay``), meanwhile renders the photo benchmark (the validation and
test items as warehouse photos, :mod:`model_training.photo_bench`, cached under ``DATA_DIR/cache``), fits a
calibration temperature on the validation split and photos and bakes it into the served model, optionally wraps
it in test-time augmentation, evaluates ONCE on the test split and the test photos, logs params, metrics
(accuracy, per class, photo benchmark, ECE, wrong-and-confident shares), artifacts, the model and the drift
reference to MLflow (``MLFLOW_TRACKING_URI``), registers the model as ``MODEL_NAME`` with alias ``challenger``
and moves ``champion`` to it when its test accuracy and its photo-benchmark accuracy are >= the current
champion's (or there is none, or ``--force-promote``).

Environment defaults for the flags: TRAIN_EPOCHS, TRAIN_BATCH_SIZE, TRAIN_LEARNING_RATE, TRAIN_SEED,
TRAIN_ARCH, TRAIN_TTA, TRAIN_PRECISION, TRAIN_EMA_DECAY, MLFLOW_EXPERIMENT_NAME; REVIEW_THRESHOLD sets the
confidence under which an answer goes to a person (the wrong-and-confident share counts mistakes at or above it).

Exit codes: 0 success; 1 unexpected error (the MLflow run is marked FAILED); 2 bad arguments;
3 processed data missing or unusable (run ``python data_processing/process.py`` first).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import positive_float, positive_int
from common.logging import setup_logging
from common.settings import PROJECT_ROOT, Settings

log = logging.getLogger("model_training.train")

DEFAULT_EXPERIMENT = "refund-item-classifier"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_DATA = 0, 1, 2, 3
PRECISIONS = ("float32", "mixed_bfloat16")
PHOTO_WORKERS = 2  # photo-rendering processes (lowest priority: they take what training leaves idle)
# Kept by the time budget for evaluation, MLflow logging and registration after the fit (measured as the metric
# after_fit_seconds; photo renders still pending are added on top).
AFTER_FIT_SECONDS = 75.0
CONFIDENT_ERROR_TARGET = 0.02  # issue 13: at most 2 % of photo answers wrong with a confidence above the threshold


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; all of it is logged as MLflow params."""

    epochs: int = 40  # the most; the time budget may train fewer (bfloat16 made an epoch ~18 s on a quiet host)
    batch_size: int = 256  # bigger tensors keep both cores busier (docs/training.md: timing probes)
    learning_rate: float = 4e-3  # peak of the one-cycle schedule
    seed: int = 42
    arch: str = "cnn"
    limit: int | None = None
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # or "sgd" (Nesterov momentum 0.9; weight decay is decoupled, scaled by the lr)
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    max_shift: int = 1
    erase_prob: float = 0.0
    photo_aug: float = 0.5  # share of training images given photo effects (model.photo_augment)
    flip: str = "none"  # "none", "all", or "garments" (everything but footwear)
    tta: str = "none"  # test-time views the served model averages (inference.views.TTA_VIEWS): "none" or "shift5"
    precision: str = "mixed_bfloat16"  # bfloat16 compute, float32 weights (training only); or "float32"
    ema_decay: float = 0.999  # > 0: keep an exponential moving average of the weights; select and serve it
    time_budget: float = 840.0  # seconds for the whole run (14 min); after epoch 2 the epochs are cut to fit; 0 = off
    photo_seed: int = 2026  # the photo benchmark's rendering seed (model_training.photo_bench)
    photo_val_per_class: int = 100  # validation photos per class (model choice, calibration)
    photo_test_per_class: int = 200  # test photos per class (reporting)
    experiment: str = DEFAULT_EXPERIMENT
    register: bool = True
    force_promote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def with_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """``cfg`` with ``KEY=VALUE`` pairs applied, each value cast to the type of the field's default."""
    from dataclasses import fields, replace

    not_knobs = ("extra", "register", "force_promote", "limit")  # flags of their own, or not a recipe
    known = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in not_knobs}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        current = known[key]
        try:
            if raw.lower() == "none":
                value: Any = None
            elif isinstance(current, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1")
            elif isinstance(current, int | float):
                value = type(current)(float(raw)) if isinstance(current, float) else int(raw)
            else:
                value = raw
        except ValueError as exc:
            raise ValueError(f"--set {pair!r}: {raw!r} is not a valid {type(current).__name__}") from exc
        changes[key] = value
    return replace(cfg, **changes)


class DataMissing(RuntimeError):
    """The processed splits are not in the store (or are unusable)."""


# --- functional core ------------------------------------------------------------------------------------


def configure_tensorflow(threads: int | None = None) -> int:
    """Pin TF's thread pools to the cores we may use; returns the intra-op thread count."""
    import tensorflow as tf

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        # Two inter-op threads let independent small ops of the backward pass overlap (one timing probe:
        # ~10 % faster per image than one thread on 2 cores).
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:  # already initialised in this process (tests): keep what is set
        pass
    return n


def limit_split(split: Any, limit: int | None, seed: int) -> Any:
    """A stratified-enough random subset of ``limit`` items (all of them if ``limit`` is None or larger)."""
    from data_processing.dataset import Split

    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return Split(images=split.images[idx], labels=split.labels[idx], keys=split.keys[idx])


def one_hot(labels: np.ndarray) -> np.ndarray:
    """(N,) class indices -> (N, 10) float32 one-hot targets (the loss applies label smoothing)."""
    from common.labels import NUM_CLASSES

    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


@dataclass(frozen=True)
class TrainingBatches:
    """The training input: a ``tf.data`` pipeline of ``epochs * steps_per_epoch`` augmented batches."""

    dataset: Any
    steps_per_epoch: int
    epochs: int


def make_batches(
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, epochs: int | None = None
) -> TrainingBatches:
    """Shuffled, augmented batches for ``epochs`` (default ``cfg.epochs``) epochs; deterministic given the seed.

    Every epoch is a fresh permutation of all images (the last batch may be short) with fresh augmentation;
    both are stateless functions of (seed, epoch, step), so the result does not depend on threading or on
    how far an earlier run got. One pipeline for the whole run: Keras keeps its iterator across epochs
    (``steps_per_epoch``), so nothing is torn down at epoch boundaries.
    """
    import tensorflow as tf

    from data_processing.preprocessing import to_model_batch
    from model_training.model import FOOTWEAR, augment

    if cfg.flip not in ("none", "all", "garments"):
        raise ValueError(f"flip must be none, all or garments, not {cfg.flip!r}")
    epochs = cfg.epochs if epochs is None else epochs
    n = len(images)
    x_all = tf.constant(to_model_batch(images))  # THE preprocessing path; augmentation acts on its output
    y_all = tf.constant(one_hot(labels))
    flippable = tf.constant(~np.isin(labels, FOOTWEAR) if cfg.flip == "garments" else np.ones(n, dtype=bool))
    seed = tf.constant(cfg.seed, tf.int64)

    def epoch_order(epoch: Any) -> Any:
        keys = tf.random.stateless_uniform([n], tf.stack([seed, epoch]), dtype=tf.float32)
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(cfg.batch_size)

    def make_batch(step: Any, idx: Any) -> tuple[Any, Any]:
        x = augment(
            tf.gather(x_all, idx),
            tf.stack([seed, step + 1_000_003]),  # a stream apart from the shuffling seeds (seed, epoch)
            max_shift=cfg.max_shift,
            erase_prob=cfg.erase_prob,
            photo_prob=cfg.photo_aug,
            flip=cfg.flip != "none",
            flippable=tf.gather(flippable, idx),
        )
        return x, tf.gather(y_all, idx)

    dataset = tf.data.Dataset.range(epochs).flat_map(epoch_order).enumerate().map(make_batch).prefetch(2)
    return TrainingBatches(
        dataset.with_options(pipeline_options()), steps_per_epoch=int(np.ceil(n / cfg.batch_size)), epochs=epochs
    )


def pipeline_options() -> Any:
    """``tf.data`` options for training and validation input: deterministic, without the autotuning thread.

    Destroying an iterator waits for tf.data's autotuning thread, which only wakes up periodically: fits and
    validations stalled 10-40 s at iterator teardown (probes in docs/training.md). The pipelines are
    fixed-size (one map, prefetch 2), so there is nothing to tune.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> Any:
    """Preprocessed, one-hot validation data as a ``tf.data`` pipeline with :func:`pipeline_options`."""
    import tensorflow as tf

    from data_processing.preprocessing import to_model_batch

    dataset = tf.data.Dataset.from_tensor_slices((to_model_batch(images), one_hot(labels))).batch(batch_size)
    return dataset.with_options(pipeline_options())


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up from ``peak / 20`` to ``peak`` over ``warmup_steps``, then cosine decay to zero at
    ``total_steps`` (Keras' ``CosineDecay`` with warm-up, same numbers). ``total_steps`` is a variable:
    ``schedule.total_steps.assign(n)`` re-plans the decay while training (the time budget does, after epoch 2)."""
    import keras
    import tensorflow as tf

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self) -> None:
            self.peak, self.warmup = float(peak), int(warmup_steps)
            self.total_steps = tf.Variable(int(total_steps), trainable=False, dtype=tf.int64, name="total_steps")

        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            start = self.peak / 20
            warm = start + (self.peak - start) * step / max(1, self.warmup)
            span = tf.maximum(tf.cast(self.total_steps, tf.float32) - self.warmup, 1.0)
            done = tf.clip_by_value(step - self.warmup, 0.0, span)
            decayed = self.peak * 0.5 * (1.0 + tf.cos(np.pi * done / span))
            return tf.where(step < self.warmup, warm, decayed)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "warmup_steps": self.warmup, "total_steps": int(self.total_steps.numpy())}

    return WarmupCosine()


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """AdamW (or SGD) with linear warm-up to ``learning_rate`` then cosine decay to zero (one-cycle style)."""
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    schedule = warmup_cosine(cfg.learning_rate, warmup, total)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw":
        raise ValueError(f"optimizer must be adamw or sgd, not {cfg.optimizer!r}")
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)


def plan_epochs(cap: int, done: int, elapsed: float, epoch_seconds: float, budget: float, reserve: float) -> int:
    """How many epochs fit the time budget: ``done`` epochs took the run to ``elapsed`` seconds, each further one
    takes ``epoch_seconds``, and ``reserve`` seconds are kept for what follows the fit. Never fewer than ``done``,
    never more than ``cap``; no budget (``budget <= 0``) means ``cap``."""
    if budget <= 0:
        return cap
    more = int((budget - reserve - elapsed) // max(epoch_seconds, 1e-9))
    return max(done, min(cap, done + more))


def compile_for_training(model: Any, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Compile ``model`` with the run's optimizer, label-smoothed loss and accuracy metric."""
    import keras

    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (no label smoothing: the honest test loss)."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def predict_probs(model: Any, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's probabilities for 28x28 uint8 images, through the inference path that serves it."""
    from inference.models import ModelInfo
    from inference.predictor import Predictor
    from inference.runtimes import KerasGraphRuntime

    info = ModelInfo(name="in-training", version="unregistered", alias=None, run_id=None, uri="memory://")
    return Predictor(info, KerasGraphRuntime(model), max_batch=batch_size).predict_proba(images)


# --- callbacks ------------------------------------------------------------------------------------------


def ema_momentum(decay: float, step: int) -> float:
    """EMA momentum at update ``step`` (0-based): ``decay``, ramped up over the first steps (TF's num_updates
    rule) so the average is not anchored to the random initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


def _callbacks(
    cfg: TrainConfig,
    log_to_mlflow: bool,
    val: Any = None,
    *,
    clock_start: float | None = None,
    reserve: Any = None,
    steps_per_epoch: int = 1,
) -> list[Any]:
    import keras
    import tensorflow as tf

    from data_processing.preprocessing import to_model_batch

    plan = {"epochs": cfg.epochs}  # the number of epochs the run will train (the time budget may lower it)

    class TimeBudget(keras.callbacks.Callback):
        """After epoch 2, fix the number of epochs so the whole run fits ``cfg.time_budget`` seconds (epoch 2's
        time x the epochs left + ``reserve()`` seconds for evaluation, logging and unfinished photo renders), and
        re-plan the cosine decay to end at zero there; then stop after that epoch. Logged, so the run can be
        repeated exactly with ``--epochs N --time-budget 0``."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1 and cfg.time_budget > 0 and clock_start is not None:
                seconds = time.perf_counter() - self.t0
                elapsed = time.perf_counter() - clock_start
                kept = float(reserve()) if reserve is not None else 0.0
                planned = plan_epochs(cfg.epochs, 2, elapsed, seconds, cfg.time_budget, kept)
                schedule = getattr(self.model.optimizer, "_learning_rate", None)
                if planned < cfg.epochs and hasattr(schedule, "total_steps"):
                    schedule.total_steps.assign(planned * steps_per_epoch)
                    plan["epochs"] = planned
                log.info(
                    "time budget %.0f s: %.0f s elapsed, %.1f s per epoch, %.0f s kept for after the fit -> %d epochs",
                    cfg.time_budget,
                    elapsed,
                    seconds,
                    kept,
                    plan["epochs"],
                )
                if log_to_mlflow:
                    import mlflow

                    mlflow.log_metrics({"epochs_planned": plan["epochs"], "budget_epoch_seconds": seconds})
            if epoch + 1 >= plan["epochs"]:
                self.model.stop_training = True

    class EpochReporter(keras.callbacks.Callback):
        """Console progress + per-epoch MLflow metrics + keeps the best-validation-accuracy weights.

        With ``cfg.ema_decay > 0`` it also keeps an exponential moving average of every weight (BatchNorm's
        moving statistics included, so they match the averaged weights), updated in-graph after each step;
        each epoch the average is scored on ``val`` and the best epoch is chosen, and kept, by that score.
        """

        def __init__(self) -> None:
            super().__init__()
            self.best_acc = -1.0
            self.best_epoch = 0
            self.best_weights: list[np.ndarray] | None = None
            self.t0 = 0.0
            self.ema: list[Any] = []
            self.ema_step = 0

        def on_train_begin(self, logs: dict | None = None) -> None:
            if cfg.ema_decay <= 0:
                return
            live = self.model.weights
            self.ema = [tf.Variable(v, trainable=False) for v in live]
            self.val_x = to_model_batch(val.images)
            self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

            @tf.function
            def update(momentum: Any) -> None:
                for avg, v in zip(self.ema, live, strict=True):
                    avg.assign(momentum * avg + (1.0 - momentum) * tf.cast(v, avg.dtype))

            self._update = update

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.ema:
                self._update(tf.constant(ema_momentum(cfg.ema_decay, self.ema_step), tf.float32))
                self.ema_step += 1

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def _ema_accuracy(self) -> tuple[float, list[np.ndarray]]:
            live = self.model.get_weights()
            averaged = [np.asarray(v) for v in self.ema]
            self.model.set_weights(averaged)
            # A compiled forward pass over numpy chunks, no tf.data: iterator teardown can stall (docs/training.md).
            x = self.val_x
            probs = np.concatenate([np.asarray(self._forward(x[i : i + 1000])) for i in range(0, len(x), 1000)])
            self.model.set_weights(live)
            return float(np.mean(np.argmax(probs, axis=1) == val.labels)), averaged

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            val_acc = float(logs.get("val_accuracy", float("nan")))
            score, weights = val_acc, None
            if self.ema:
                score, weights = self._ema_accuracy()
            seconds = time.perf_counter() - self.t0
            improved = score > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = score, epoch + 1
                self.best_weights = weights if weights is not None else [np.copy(w) for w in self.model.get_weights()]
            log.info(
                "epoch %2d/%d  loss %.4f  acc %.4f | val loss %.4f  acc %.4f%s%s | lr %.2e | %.0f s",
                epoch + 1,
                plan["epochs"],
                logs.get("loss", float("nan")),
                logs.get("accuracy", float("nan")),
                logs.get("val_loss", float("nan")),
                val_acc,
                f"  ema {score:.4f}" if self.ema else "",
                " *" if improved else "  ",
                lr,
                seconds,
            )
            if log_to_mlflow:
                import mlflow

                metrics = {
                    "train_loss": logs.get("loss"),
                    "train_accuracy": logs.get("accuracy"),
                    "val_loss": logs.get("val_loss"),
                    "val_accuracy": logs.get("val_accuracy"),
                    "val_accuracy_ema": score if self.ema else None,
                    "learning_rate": lr,
                    "epoch_seconds": seconds,
                }
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=epoch + 1)

        def on_train_end(self, logs: dict | None = None) -> None:
            # Model choice uses the validation split only: restore the best epoch's weights.
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return [TimeBudget(), EpochReporter()]  # the budget first: the epoch line and metrics show the re-planned run


@dataclass
class FitResult:
    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    epochs_run: int = 0


def fit(
    train: Any,
    val: Any,
    cfg: TrainConfig,
    *,
    log_to_mlflow: bool = False,
    clock_start: float | None = None,
    reserve: Any = None,
) -> FitResult:
    """Build and train a model on ``train``; model choice (best epoch) by ``val`` accuracy. With
    ``cfg.time_budget``, ``clock_start`` (``time.perf_counter()`` at the start of the run) and ``reserve`` (a
    function: seconds still needed after the fit) let the run fit its budget."""
    import keras

    from model_training.model import build_model, to_plain_model

    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {cfg.precision!r}")
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(
        cfg.arch, seed=cfg.seed, fused_batch_norm=True, mixed_precision=cfg.precision == "mixed_bfloat16"
    )
    batches = make_batches(train.images, train.labels, cfg)
    compile_for_training(model, cfg, batches.steps_per_epoch)
    callbacks = _callbacks(
        cfg, log_to_mlflow, val, clock_start=clock_start, reserve=reserve, steps_per_epoch=batches.steps_per_epoch
    )
    t0 = time.perf_counter()
    hist = model.fit(
        batches.dataset,
        steps_per_epoch=batches.steps_per_epoch,
        epochs=cfg.epochs,
        shuffle=False,  # the pipeline shuffles, seeded
        validation_data=eval_dataset(val.images, val.labels),
        verbose=0,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - t0
    reporter = callbacks[-1]
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return FitResult(
        to_plain_model(model, cfg.arch), history, reporter.best_epoch, reporter.best_acc, seconds, len(hist.epoch)
    )


# --- provenance -----------------------------------------------------------------------------------------


def git_info() -> dict[str, str]:
    """Commit and dirtiness of the project checkout ('unknown' outside git)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD") or "unknown"
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model (skips MLflow's slow module-capture subprocess)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "keras", "tensorflow-cpu", "numpy"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            if pkg == "tensorflow-cpu":  # the GPU/full wheel provides the same modules
                with contextlib.suppress(PackageNotFoundError):
                    out.append(f"tensorflow=={version('tensorflow')}")
    return out


def _dataset_input(split: Any, name: str, source: str) -> Any:
    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways" for local paths
        try:
            return mlflow.data.from_numpy(
                split.images, targets=split.labels, source=source, name=name, digest=split.digest()
            )
        except Exception:  # an unresolvable source must not fail the run: keep name + digest
            return mlflow.data.from_numpy(split.images, targets=split.labels, name=name, digest=split.digest())


def _split_source(settings: Settings, name: str) -> str:
    from data_processing.dataset import split_key

    uri = settings.storage_uri.rstrip("/")
    return f"{uri}/{split_key(name)}"


# --- the I/O shell --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    run_id: str
    test_accuracy: float
    macro_f1: float
    seconds: float
    version: str | None
    aliases: list[str]
    promoted: bool
    reason: str
    photo_accuracy: float | None = None


def load_splits(settings: Settings) -> tuple[Any, Any, Any]:
    from common.storage import ObjectNotFound, storage_from_settings
    from data_processing.dataset import load_split

    storage = storage_from_settings(settings)
    splits = []
    for name in ("train", "val", "test"):
        try:
            split = load_split(storage, name)
        except ObjectNotFound as exc:
            raise DataMissing(
                f"processed split {name!r} not found in {settings.storage_uri}; run data_processing/process.py first"
            ) from exc
        if len(split) == 0 or split.images.shape[1:] != (28, 28):
            raise DataMissing(f"processed split {name!r} is empty or malformed: images {split.images.shape}")
        splits.append(split)
    return splits[0], splits[1], splits[2]


def run_training(settings: Settings, cfg: TrainConfig) -> RunSummary:
    """The whole run: data -> fit -> calibrate -> evaluate (test split and photo benchmark) -> MLflow (params,
    metrics, artifacts, model, reference) -> registry."""
    import mlflow

    from common.tracking import ensure_experiment
    from inference.export import export_and_log
    from model_training import photo_bench
    from model_training.model_io import log_keras_model
    from monitoring.reference import build_reference, log_reference

    t_start = time.perf_counter()
    threads = configure_tensorflow()
    train, val, test = load_splits(settings)
    train = limit_split(train, cfg.limit, cfg.seed)
    log.info("data: train %d, val %d, test %d (store %s)", len(train), len(val), len(test), settings.storage_uri)
    # The photo benchmark renders in low-priority worker processes while the network trains (or comes from the
    # local cache when the renderer, the preprocessing and the items are unchanged).
    pending, render_pool = photo_bench.start_rendering(
        [("val", val.images, val.labels), ("test", test.images, test.labels)],
        seed=cfg.photo_seed,
        per_class={"val": cfg.photo_val_per_class, "test": cfg.photo_test_per_class},
        cache_dir=Path(settings.data_dir) / "cache" / "photo-bench",
        workers=PHOTO_WORKERS,
    )

    exp_id = ensure_experiment(cfg.experiment, settings.mlflow_tracking_uri)
    try:
        with mlflow.start_run(experiment_id=exp_id) as run:
            run_id = run.info.run_id
            try:
                _log_run_inputs(settings, cfg, train, val, test, threads)
                result = fit(
                    train,
                    val,
                    cfg,
                    log_to_mlflow=True,
                    clock_start=t_start,
                    reserve=lambda: AFTER_FIT_SECONDS + photo_bench.seconds_left(pending.values(), PHOTO_WORKERS),
                )
                t_eval = time.perf_counter()
                photo_val, photo_test = pending["val"].result(), pending["test"].result()
                log.info(
                    "photo benchmark: %d val + %d test photos (%s; waited %.0f s after the fit)",
                    len(photo_val),
                    len(photo_test),
                    "cached" if pending["val"].from_cache and pending["test"].from_cache else "rendered",
                    time.perf_counter() - t_eval,
                )
                report = evaluate_and_log(
                    result, cfg, val, test, photo_val, photo_test, review_threshold=settings.review_threshold
                )
                model = report.served

                # Drift reference: what the monitor compares live traffic against, from the validation split.
                log_reference(
                    build_reference(val.images, report.val_probs, split="val", digest=val.digest(), run_id=run_id)
                )

                from data_processing.preprocessing import to_model_batch

                model_info = log_keras_model(
                    model, to_model_batch(test.images[:2]), pip_requirements=pip_requirements()
                )
                mlflow.set_tag("model_uri", model_info.model_uri)
                # The fast runtime and its parity report, in this run, before the version can be registered.
                export = export_and_log(
                    model,
                    {"val": (val.images, val.labels), "test": (test.images, test.labels)},
                    run_id,
                    settings.mlflow_tracking_uri,
                    keras_probs={"val": report.val_probs, "test": report.test_probs},
                )

                version, aliases, promoted, reason = None, [], False, "registration disabled (--no-register)"
                if cfg.register:
                    from model_training.registry import register_and_gate

                    decision = register_and_gate(
                        model_info.model_uri,
                        settings.model_name,
                        run_id=run_id,
                        test_accuracy=report.test.accuracy,
                        macro_f1=report.test.macro_f1,
                        photo_accuracy=report.photo_test.accuracy,
                        photo_benchmark=photo_bench.benchmark_id(photo_test),
                        tags={
                            "runtime": export.runtime,
                            "review_threshold_for_target": f"{report.metrics['review_threshold_for_target']:.4f}",
                        },
                        force=cfg.force_promote,
                        tracking_uri=settings.mlflow_tracking_uri,
                    )
                    version, aliases, promoted, reason = (
                        decision.version,
                        decision.aliases,
                        decision.promoted,
                        decision.reason,
                    )
                    mlflow.set_tags({"registered_version": version, "promoted": str(promoted).lower()})
                total_seconds = time.perf_counter() - t_start
                mlflow.log_metrics({"total_seconds": total_seconds, "after_fit_seconds": time.perf_counter() - t_eval})
            except BaseException:
                mlflow.end_run(status="FAILED")
                raise
    finally:
        if render_pool is not None:
            render_pool.shutdown(cancel_futures=True)
    return RunSummary(
        run_id,
        report.test.accuracy,
        report.test.macro_f1,
        total_seconds,
        version,
        aliases,
        promoted,
        reason,
        photo_accuracy=report.photo_test.accuracy,
    )


def _log_run_inputs(settings: Settings, cfg: TrainConfig, train: Any, val: Any, test: Any, threads: int) -> None:
    """Tags (provenance), params (every knob, sizes, digests) and the dataset inputs of the active run."""
    import mlflow

    git = git_info()
    versions = package_versions()
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": git["git_commit"],
            **git,
            **{f"version.{k}": v for k, v in versions.items()},
            "model_name": settings.model_name,
        }
    )
    params = {k: v for k, v in asdict(cfg).items() if k not in ("extra",)}
    params.update(cfg.extra)
    params.update(
        {
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "tf_intra_op_threads": threads,
            "lr_schedule": "linear warm-up + cosine to 0",
            "train_digest": train.digest(),
            "val_digest": val.digest(),
            "test_digest": test.digest(),
            "review_threshold": settings.review_threshold,
        }
    )
    mlflow.log_params({k: "None" if v is None else v for k, v in params.items()})
    for split, name, context in ((train, "train", "training"), (val, "val", "validation"), (test, "test", "testing")):
        mlflow.log_input(_dataset_input(split, f"fashion-mnist-{name}", _split_source(settings, name)), context=context)


@dataclass
class EvaluationReport:
    served: Any  # the calibrated model that is logged, registered and served
    temperature: float
    val_probs: np.ndarray  # the served model's answers on the validation split (for the drift reference)
    test_probs: np.ndarray  # ... and on the test split (the exported runtime's parity is checked against both)
    test: Any  # ClassificationMetrics of the served model on the test split
    photo_test: Any  # ... and on the photo benchmark's test photos
    metrics: dict[str, float]


def evaluate_and_log(
    result: FitResult,
    cfg: TrainConfig,
    val: Any,
    test: Any,
    photo_val: Any,
    photo_test: Any,
    *,
    review_threshold: float,
) -> EvaluationReport:
    """Calibrate on validation data, build the served model, evaluate it ONCE on the test split and the test
    photos, and log metrics and artifacts to the active MLflow run.

    The temperature is fitted on the clean validation split and the validation photos together (what the model
    will see in service is photos); the test split and test photos only report.
    """
    import mlflow

    from inference.views import with_tta
    from model_training import evaluation as ev
    from model_training.model import count_flops, to_plain_model

    network = result.model
    raw_val = predict_probs(network, val.images)
    raw_photo_val = predict_probs(network, photo_val.images)
    temperature = ev.fit_temperature(
        np.concatenate([raw_val, raw_photo_val]), np.concatenate([val.labels, photo_val.labels])
    )
    calibrated = to_plain_model(network, cfg.arch, temperature=temperature)
    model = with_tta(calibrated, cfg.tta)  # what is evaluated, logged, registered and served
    mlflow.log_params({"model_params": model.count_params(), "flops_per_image": count_flops(model)})
    val_probs = ev.with_temperature(raw_val, temperature) if model is calibrated else predict_probs(model, val.images)
    photo_val_probs = predict_probs(model, photo_val.images)

    # The test split and the test photos are touched once, here: the served model, and (reported only, never
    # used to choose) the uncalibrated network on the plain image alone.
    test_probs = predict_probs(model, test.images)
    photo_probs = predict_probs(model, photo_test.images)
    if model is calibrated:  # the network's own answers are the served ones with the temperature undone
        raw_test, raw_photo_test = (
            ev.with_temperature(test_probs, 1 / temperature),
            ev.with_temperature(photo_probs, 1 / temperature),
        )
    else:
        raw_test, raw_photo_test = predict_probs(network, test.images), predict_probs(network, photo_test.images)
    test_m = ev.classification_metrics(test.labels, test_probs.argmax(axis=1))
    photo_m = ev.classification_metrics(photo_test.labels, photo_probs.argmax(axis=1))
    photo_val_m = ev.classification_metrics(photo_val.labels, photo_val_probs.argmax(axis=1))
    gaps = test_m.recall - photo_m.recall  # per class: clean accuracy minus photo accuracy
    single_accuracy = float(np.mean(raw_test.argmax(axis=1) == test.labels))
    metrics = {
        **test_m.as_metrics("test_"),
        **photo_m.as_metrics("photo_test_"),
        "test_loss": cross_entropy(test_probs, test.labels),
        "test_accuracy_single_view": single_accuracy,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "val_accuracy_served": float(np.mean(val_probs.argmax(axis=1) == val.labels)),
        "photo_val_accuracy": photo_val_m.accuracy,
        "photo_val_macro_f1": photo_val_m.macro_f1,
        "photo_test_loss": cross_entropy(photo_probs, photo_test.labels),
        "photo_test_worst_class_gap": float(gaps.max()),
        "photo_test_failed": float(photo_test.failed),
        "temperature": temperature,
        "training_seconds": result.seconds,
        "epochs_run": result.epochs_run,
    }
    for name, raw, served, labels in (
        ("val", raw_val, val_probs, val.labels),
        ("photo_val", raw_photo_val, photo_val_probs, photo_val.labels),
        ("test", raw_test, test_probs, test.labels),
        ("photo_test", raw_photo_test, photo_probs, photo_test.labels),
    ):
        metrics[f"{name}_ece_before"] = ev.expected_calibration_error(raw, labels)
        metrics[f"{name}_ece"] = ev.expected_calibration_error(served, labels)
        metrics[f"{name}_confident_error_share_before"] = ev.confident_error_share(raw, labels, review_threshold)
        metrics[f"{name}_confident_error_share"] = ev.confident_error_share(served, labels, review_threshold)
        metrics[f"{name}_review_share"] = float(np.mean(served.max(axis=1) < review_threshold))
    # The review threshold that keeps unreviewed mistakes on photos within the target, chosen on validation photos:
    # with calibrated probabilities a threshold of 0.7 lets through every answer that is right only 70-80 % of
    # the time, so the threshold, not the calibration, sets the wrong-and-confident share.
    threshold = ev.threshold_for_error_share(photo_val_probs, photo_val.labels, CONFIDENT_ERROR_TARGET)
    metrics["review_threshold_for_target"] = threshold
    for name, served, labels in (("test", test_probs, test.labels), ("photo_test", photo_probs, photo_test.labels)):
        metrics[f"{name}_confident_error_share_at_target_threshold"] = ev.confident_error_share(
            served, labels, threshold
        )
        metrics[f"{name}_review_share_at_target_threshold"] = float(np.mean(served.max(axis=1) < threshold))
    mlflow.log_metrics(metrics)
    worst = int(np.argmax(gaps))
    from common.labels import CLASS_NAMES

    log.info(
        "test accuracy %.4f, macro F1 %.4f (tta %s; the network alone: %.4f) | photos: val %.4f, test %.4f, "
        "worst class %s %.3f vs %.3f clean | T=%.2f, ECE test %.4f -> %.4f, photos %.4f -> %.4f | wrong and "
        "confident: test %.2f %%, photos %.2f %% (at a review threshold of %.2f: %.2f %%, reviewing %.1f %%)",
        test_m.accuracy,
        test_m.macro_f1,
        cfg.tta,
        single_accuracy,
        photo_val_m.accuracy,
        photo_m.accuracy,
        CLASS_NAMES[worst],
        photo_m.recall[worst],
        test_m.recall[worst],
        temperature,
        metrics["test_ece_before"],
        metrics["test_ece"],
        metrics["photo_test_ece_before"],
        metrics["photo_test_ece"],
        100 * metrics["test_confident_error_share"],
        100 * metrics["photo_test_confident_error_share"],
        threshold,
        100 * metrics["photo_test_confident_error_share_at_target_threshold"],
        100 * metrics["photo_test_review_share_at_target_threshold"],
    )
    mlflow.log_text(ev.classification_report(test_m), "evaluation/classification_report.txt")
    mlflow.log_text(ev.classification_report(photo_m), "evaluation/photo_classification_report.txt")
    mlflow.log_dict(
        {
            "accuracy": test_m.accuracy,
            "macro_f1": test_m.macro_f1,
            "confusion_matrix": test_m.confusion.tolist(),
            "per_class": test_m.as_metrics(""),
        },
        "evaluation/metrics.json",
    )
    mlflow.log_dict(photo_report(photo_test, photo_probs, test_m, review_threshold), "evaluation/photo_metrics.json")
    _log_png(ev.plot_confusion_matrix(test_m.confusion), "evaluation/confusion_matrix.png")
    _log_png(
        ev.plot_confusion_matrix(photo_m.confusion, title="Confusion matrix (photo benchmark, test"),
        "evaluation/photo_confusion_matrix.png",
    )
    _log_png(ev.plot_learning_curves(result.history), "evaluation/learning_curves.png")
    _log_png(ev.plot_misclassified(test.images, test.labels, test_probs), "evaluation/misclassified.png")
    _log_png(photo_failure_grid(photo_test, test, photo_probs), "evaluation/photo_failures.png")
    return EvaluationReport(model, temperature, val_probs, test_probs, test_m, photo_m, metrics)


def photo_report(photo_set: Any, probs: np.ndarray, clean: Any, review_threshold: float) -> dict[str, Any]:
    """The photo benchmark's numbers as JSON: overall, per class beside the clean test accuracy, per kind of
    photo (backdrop, item tone, cut, EXIF, megapixels, JPEG quality), and the confusion matrix."""
    from common.labels import CLASS_NAMES
    from data_processing.photos import draw_params
    from model_training import evaluation as ev
    from model_training.photo_bench import photo_seed

    m = ev.classification_metrics(photo_set.labels, probs.argmax(axis=1))
    correct = probs.argmax(axis=1) == photo_set.labels
    # The parameters are the generator's first draws, so they are known without rendering again.
    params = [
        draw_params(np.random.default_rng(photo_seed(photo_set.seed, photo_set.split, int(i))))
        for i in photo_set.indices
    ]
    kinds: dict[str, dict[str, list[bool]]] = {}

    def add(kind: str, value: str, ok: bool) -> None:
        kinds.setdefault(kind, {}).setdefault(value, []).append(bool(ok))

    for p, ok in zip(params, correct, strict=True):
        add("backdrop", p.texture or p.backdrop, ok)
        add("item_tone", p.item_tone, ok)
        add("cut", str(p.cut).lower(), ok)
        add("exif_rotated", str(p.exif_orientation != 1).lower(), ok)
        add("shadow", str(p.shadow > 0).lower(), ok)
        add("megapixels", "<1" if p.megapixels < 1 else "1-4" if p.megapixels < 4 else ">=4", ok)
        add("jpeg_quality", "50-69" if p.quality < 70 else "70-84" if p.quality < 85 else "85-95", ok)
    return {
        "n": len(photo_set),
        "seed": photo_set.seed,
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "failed_to_preprocess": photo_set.failed,
        "confident_error_share": ev.confident_error_share(probs, photo_set.labels, review_threshold),
        "per_class": {
            CLASS_NAMES[k]: {"photo": float(m.recall[k]), "clean_test": float(clean.recall[k]), "n": int(m.support[k])}
            for k in range(len(CLASS_NAMES))
        },
        "per_kind": {
            kind: {value: {"accuracy": float(np.mean(oks)), "n": len(oks)} for value, oks in sorted(values.items())}
            for kind, values in kinds.items()
        },
        "confusion_matrix": m.confusion.tolist(),
    }


def photo_failure_grid(photo_set: Any, split: Any, probs: np.ndarray, max_items: int = 24) -> bytes:
    """The most confident mistakes on the photos: each photo rendered again (seeded) beside the model's input."""
    from model_training import evaluation as ev
    from model_training.photo_bench import failure_photos

    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != photo_set.labels)
    n_wrong = len(wrong)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:max_items]
    photos = failure_photos(photo_set.split, split.images, photo_set.indices[wrong], photo_set.seed)
    return ev.plot_photo_failures(
        photos,
        photo_set.images[wrong],
        photo_set.labels[wrong],
        probs[wrong],
        title=f"Photo benchmark ({photo_set.split}): most confident mistakes, {n_wrong} of {len(photo_set)} wrong",
    )


def _log_png(data: bytes, artifact_file: str) -> None:
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_file).parent))


# --- CLI ------------------------------------------------------------------------------------------------


def _env(name: str, cast: Any, default: Any) -> Any:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return cast(value)
    except ValueError as exc:
        raise SystemExit(f"error: {name}={value!r} is not a valid {cast.__name__}") from exc


def build_parser() -> argparse.ArgumentParser:
    from inference.views import TTA_VIEWS
    from model_training.model import ARCHITECTURES

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=_env("TRAIN_EPOCHS", int, d.epochs),
                   help=f"training epochs (env TRAIN_EPOCHS, default {d.epochs})")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=_env("TRAIN_BATCH_SIZE", int, d.batch_size),
                   help=f"mini-batch size (env TRAIN_BATCH_SIZE, default {d.batch_size})")  # fmt: skip
    p.add_argument("--learning-rate", type=positive_float,
                   default=_env("TRAIN_LEARNING_RATE", float, d.learning_rate),
                   help=f"peak AdamW learning rate (env TRAIN_LEARNING_RATE, default {d.learning_rate})")  # fmt: skip
    p.add_argument("--seed", type=int, default=_env("TRAIN_SEED", int, d.seed),
                   help=f"seed for init, shuffling, augmentation (env TRAIN_SEED, default {d.seed})")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on a random subset of N training images (quick runs, tests)")  # fmt: skip
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=_env("TRAIN_ARCH", str, d.arch),
                   help=f"architecture (env TRAIN_ARCH, default {d.arch}; 'tiny' is for tests)")  # fmt: skip
    p.add_argument("--tta", choices=sorted(TTA_VIEWS), default=_env("TRAIN_TTA", str, d.tta),
                   help=f"test-time augmentation of the served model (env TRAIN_TTA, default {d.tta}): "
                        "'shift5' averages 5 views (~+0.2 points accuracy, 5x inference FLOPs)")  # fmt: skip
    p.add_argument("--precision", choices=PRECISIONS, default=_env("TRAIN_PRECISION", str, d.precision),
                   help=f"training arithmetic (env TRAIN_PRECISION, default {d.precision}); the served model is "
                        "float32 either way")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=_env("TRAIN_EMA_DECAY", float, d.ema_decay),
                   help=f"decay of the weight average that is selected and served, 0 = off (env TRAIN_EMA_DECAY, "
                        f"default {d.ema_decay})")  # fmt: skip
    p.add_argument("--time-budget", type=float, default=_env("TRAIN_TIME_BUDGET", float, d.time_budget),
                   help=f"seconds for the whole run (env TRAIN_TIME_BUDGET, default {d.time_budget:.0f}): after "
                        "epoch 2 the number of epochs is lowered, if needed, to fit; 0 = always --epochs")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="research knob: any other TrainConfig field, e.g. --set erase_prob=0.3 (repeatable; "
                        "logged as params like every knob)")  # fmt: skip
    p.add_argument("--experiment", default=_env("MLFLOW_EXPERIMENT_NAME", str, DEFAULT_EXPERIMENT),
                   help=f"MLflow experiment (env MLFLOW_EXPERIMENT_NAME, default {DEFAULT_EXPERIMENT})")  # fmt: skip
    p.add_argument("--no-register", action="store_true", help="log the run but do not register the model")
    p.add_argument("--force-promote", action="store_true",
                   help="make the new version champion even if its test accuracy is lower")  # fmt: skip
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--storage-uri", default=None, help="data store holding processed/ (default: STORAGE_URI)")
    p.add_argument("--model-name", default=None, help="registered model name (default: MODEL_NAME)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        settings = Settings.from_env().with_overrides(
            mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri, model_name=args.model_name
        )
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        arch=args.arch,
        tta=args.tta,
        precision=args.precision,
        ema_decay=args.ema_decay,
        time_budget=args.time_budget,
        limit=args.limit,
        experiment=args.experiment,
        register=not args.no_register,
        force_promote=args.force_promote,
    )
    try:
        cfg = with_overrides(cfg, args.overrides)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        summary = run_training(settings, cfg)
    except DataMissing as exc:
        log.error("%s", exc)
        return EXIT_NO_DATA
    except Exception:
        log.exception("training failed")
        return EXIT_ERROR
    where = f"version {summary.version} aliases [{', '.join(summary.aliases)}]" if summary.version else "not registered"
    print(
        f"DONE test_accuracy={summary.test_accuracy:.4f} macro_f1={summary.macro_f1:.4f} "
        f"photo_accuracy={summary.photo_accuracy:.4f} time={summary.seconds:.0f}s {settings.model_name} {where} "
        f"run={summary.run_id} ({summary.reason})",
        flush=True,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
