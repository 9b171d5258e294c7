"""The fit loop: TensorFlow's threads, the optimizer and its one-cycle schedule, the time budget, the epoch
reporter (console, MLflow, EMA of the weights, best validation epoch) and :func:`fit` itself."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf

from common.labels import NUM_CLASSES
from common.progress import progress_bar
from data_processing.preprocessing import to_model_batch
from model_training.config import PRECISIONS, TrainConfig
from model_training.data import eval_dataset, make_batches
from model_training.model import build_model, to_plain_model

log = logging.getLogger(__name__)

EXTEND_UNTIL = 0.6  # the time budget's plan may still grow until this share of its epochs is done
RECENT_EPOCHS = 3  # the host's current speed: the median of this many latest epochs (one slow epoch is not a trend)


def configure_tensorflow(threads: int | None = None) -> int:
    """Pin TF's thread pools to the cores we may use; returns the intra-op thread count."""

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


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up from ``peak / 20`` to ``peak`` over ``warmup_steps``, then cosine decay to zero at
    ``total_steps`` (Keras' ``CosineDecay`` with warm-up, same numbers). ``total_steps`` is a variable:
    ``schedule.total_steps.assign(n)`` re-plans the decay while training (the time budget does, after epoch 2)."""

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


def replan(
    planned: int, cap: int, done: int, elapsed: float, epoch_seconds: float, budget: float, reserve: float
) -> int:
    """The plan after another epoch, at the current pace (``epoch_seconds``) and with the time now kept for after
    the fit (``reserve``): cut to what fits whenever the plan no longer does (a host slowing down, renders taking
    longer); grown to what fits with half an epoch to spare (so the next epoch's noise does not cut it back) while
    at most ``EXTEND_UNTIL`` of the plan is done, so the cosine decay that stretches to the new end has most of its
    way still ahead. Never fewer than ``done``, never more than ``cap``; no budget means ``planned``."""
    if budget <= 0:
        return planned
    fits = plan_epochs(cap, done, elapsed, epoch_seconds, budget, reserve)
    if fits < planned:
        return fits
    if done > EXTEND_UNTIL * planned:
        return planned
    return max(planned, plan_epochs(cap, done, elapsed, epoch_seconds, budget, reserve + epoch_seconds / 2))


class SelfDistillation:
    """The network's own predictions, averaged over the views of each image it was trained on, as a soft target.

    Every training image keeps a row of averaged predictions (``table``): each epoch its new prediction (another
    shift, another photo effect, a later network) is blended in, keeping ``momentum`` of the old average, as in
    temporal ensembling (Laine & Aila, 2017). The target is ``(1 - w) x`` the label-smoothed label ``+ w x`` that
    average, with ``w`` ramped linearly from 0 at the first epoch to ``final_weight`` at the last, as in
    progressive self-knowledge distillation (Kim et al., 2021). It is the ensemble of augmented views distilled
    into the single network at no extra forward pass: the predictions are the training step's own. Training
    batches carry each image's index as an 11th target column (``make_batches``); validation targets have 10
    columns and get the plain label-smoothed loss.
    """

    def __init__(self, n: int, final_weight: float, momentum: float, label_smoothing: float) -> None:
        if not 0 < final_weight <= 1 or not 0 <= momentum < 1:
            raise ValueError(f"distill must be in (0, 1] and its momentum in [0, 1), got {final_weight}, {momentum}")
        self.final_weight, self.momentum, self.label_smoothing = final_weight, momentum, label_smoothing
        self.table = tf.Variable(tf.zeros([n, NUM_CLASSES]), trainable=False, name="past_predictions")
        self.weight = tf.Variable(0.0, trainable=False, name="distill_weight")
        self.keep = tf.Variable(0.0, trainable=False, name="distill_keep")

    def start_epoch(self, epoch: int, planned: int) -> None:
        """Set the target's weight for ``epoch`` (0-based) of ``planned``; the first epoch fills the table."""
        self.weight.assign(self.final_weight * min(1.0, epoch / max(1, planned - 1)))
        self.keep.assign(self.momentum if epoch > 0 else 0.0)

    def targets(self, y_true: Any, y_pred: Any) -> Any:
        """The batch's soft targets; for training batches, also blend ``y_pred`` into the table."""
        y_true = tf.cast(y_true, tf.float32)
        hard = y_true[:, :NUM_CLASSES] * (1.0 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        if y_true.shape[-1] == NUM_CLASSES:
            return hard
        idx = tf.cast(y_true[:, NUM_CLASSES], tf.int32)
        past = tf.gather(self.table, idx)
        now = tf.stop_gradient(tf.cast(y_pred, tf.float32))
        self.table.scatter_nd_update(idx[:, None], self.keep * past + (1.0 - self.keep) * now)
        return (1.0 - self.weight) * hard + self.weight * past

    def loss(self) -> Any:
        owner = self

        class SelfDistilledCrossentropy(keras.losses.Loss):
            def call(self, y_true: Any, y_pred: Any) -> Any:
                return keras.losses.categorical_crossentropy(owner.targets(y_true, y_pred), y_pred)

        return SelfDistilledCrossentropy(name="self_distilled_crossentropy")


def distiller_for(cfg: TrainConfig, n_images: int) -> SelfDistillation | None:
    """The run's self-distillation over ``n_images`` training images, or None when ``cfg.distill`` is off."""
    if cfg.distill <= 0:
        return None
    return SelfDistillation(n_images, cfg.distill, cfg.distill_momentum, cfg.label_smoothing)


def _label_accuracy(y_true: Any, y_pred: Any) -> Any:
    return keras.metrics.categorical_accuracy(y_true[:, :NUM_CLASSES], y_pred)


def compile_for_training(
    model: Any, cfg: TrainConfig, steps_per_epoch: int, distiller: SelfDistillation | None = None
) -> None:
    """Compile ``model`` with the run's optimizer, label-smoothed (or self-distilled) loss and accuracy metric."""

    if distiller is None:
        loss: Any = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics: list[Any] = ["accuracy"]
    else:  # targets carry an index column: accuracy on the label's columns only
        loss, metrics = distiller.loss(), [keras.metrics.MeanMetricWrapper(_label_accuracy, name="accuracy")]
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics)


def ema_momentum(decay: float, step: int) -> float:
    """EMA momentum at update ``step`` (0-based): ``decay``, ramped up over the first steps (TF's num_updates
    rule) so the average is not anchored to the random initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


def make_callbacks(
    cfg: TrainConfig,
    log_to_mlflow: bool,
    val: Any = None,
    *,
    clock_start: float | None = None,
    reserve: Any = None,
    steps_per_epoch: int = 1,
    bar: Any = None,
    clock: Callable[[], float] = time.perf_counter,
    distiller: SelfDistillation | None = None,
) -> list[Any]:
    """The run's callbacks: the time budget, then ``bar`` (a progress bar over the planned steps, if any), then
    the epoch reporter, which :func:`fit` reads the best epoch from (it is last). ``clock`` is the time budget's
    clock (``clock_start`` is a reading of it)."""

    plan = {"epochs": cfg.epochs}  # the number of epochs the run will train (the time budget may lower it)

    class TimeBudget(keras.callbacks.Callback):
        """After epoch 2, fix the number of epochs so the whole run fits ``cfg.time_budget`` seconds (epoch 2's
        time x the epochs left + ``reserve()`` seconds for evaluation, logging and unfinished photo renders), and
        re-plan the cosine decay to end at zero there; then stop after that epoch. After every later epoch the
        plan is checked again at the latest epochs' pace (:func:`replan`): cut when it no longer fits, grown
        while early enough when more now fits. Logged, so the run can be repeated exactly with ``--epochs N
        --time-budget 0``."""

        def __init__(self) -> None:
            super().__init__()
            self.later_epochs: list[float] = []  # seconds of each epoch from the second on (the first compiles too)

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = clock()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch >= 1:
                self.later_epochs.append(clock() - self.t0)
            if cfg.time_budget > 0 and clock_start is not None:
                kept = float(reserve()) if reserve is not None else 0.0  # seconds still needed after the fit
                if epoch == 1:
                    self._replan(plan_epochs, epoch, self.later_epochs[-1], kept)
                elif epoch >= 2 and epoch + 1 < plan["epochs"]:
                    # The pace now, not the run's mean: the photo renders slow the first epochs of a fresh clone's
                    # run, and a host can slow down; one slow epoch is not a trend.
                    recent = float(np.median(self.later_epochs[-RECENT_EPOCHS:]))
                    self._replan(lambda *a: replan(plan["epochs"], *a), epoch, recent, kept)
            if epoch + 1 >= plan["epochs"]:
                self.model.stop_training = True

        def _replan(self, rule: Any, epoch: int, seconds: float, kept: float) -> None:
            elapsed = clock() - clock_start
            planned = rule(cfg.epochs, epoch + 1, elapsed, seconds, cfg.time_budget, kept)
            schedule = getattr(self.model.optimizer, "_learning_rate", None)
            if planned != plan["epochs"] and hasattr(schedule, "total_steps"):
                schedule.total_steps.assign(planned * steps_per_epoch)
                plan["epochs"] = planned
                if bar is not None:
                    bar.total = planned * steps_per_epoch
                    bar.refresh()
            elif epoch > 1:
                return  # nothing changed: no log line
            log.info(
                "time budget %.0f s: %.0f s elapsed, %.1f s per epoch, %.0f s kept for after the fit -> %d epochs",
                cfg.time_budget,
                elapsed,
                seconds,
                kept,
                plan["epochs"],
            )
            if log_to_mlflow:
                metrics = {"epochs_planned": plan["epochs"]}
                if epoch == 1:
                    metrics["budget_epoch_seconds"] = seconds
                mlflow.log_metrics(metrics, step=epoch + 1)

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

    class StepBar(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            bar.update(1)

    class DistillRamp(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            distiller.start_epoch(epoch, plan["epochs"])  # the plan as the time budget last left it

    # The budget first: the epoch line and metrics show the re-planned run.
    extra = [*([StepBar()] if bar is not None else []), *([DistillRamp()] if distiller is not None else [])]
    return [TimeBudget(), *extra, EpochReporter()]


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

    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {cfg.precision!r}")
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(
        cfg.arch, seed=cfg.seed, fused_batch_norm=True, mixed_precision=cfg.precision == "mixed_bfloat16"
    )
    batches = make_batches(train.images, train.labels, cfg)
    distiller = distiller_for(cfg, len(train.images))
    compile_for_training(model, cfg, batches.steps_per_epoch, distiller)
    t0 = time.perf_counter()
    # A bar over the training steps on a terminal (silent under cron and in logs); the epoch lines go above it.
    with progress_bar(cfg.epochs * batches.steps_per_epoch, "train", unit="step") as bar:
        callbacks = make_callbacks(
            cfg,
            log_to_mlflow,
            val,
            clock_start=clock_start,
            reserve=reserve,
            steps_per_epoch=batches.steps_per_epoch,
            bar=None if bar.disable else bar,
            distiller=distiller,
        )
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
