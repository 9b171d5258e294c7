"""The fit loop: TensorFlow's threads, the optimizer and its one-cycle schedule, self-distillation, the callbacks
the run uses (:mod:`model_training.callbacks`: time budget, epoch reporter with the EMA of the weights and the best
validation epoch) and :func:`fit` itself."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from common.labels import NUM_CLASSES
from common.progress import progress_bar
from model_training.callbacks import BudgetClock, DistillRamp, EpochPlan, EpochReporter, StepBar, TimeBudget
from model_training.config import PRECISIONS, TrainConfig
from model_training.data import eval_dataset, make_batches
from model_training.network import build_model, to_plain_model

if TYPE_CHECKING:
    from tqdm import tqdm

    from data_processing.dataset import Split

log = logging.getLogger(__name__)

WARMUP_SHARE = 0.2  # the learning-rate warm-up's largest share of a run (one epoch of 44; a fifth of 5)


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


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from ``peak / 20`` to ``peak`` over ``warmup_steps``, then cosine decay to zero at
    ``total_steps`` (Keras' ``CosineDecay`` with warm-up, same numbers). ``total_steps`` is a variable:
    ``schedule.total_steps.assign(n)`` re-plans the decay while training (the time budget does, after epoch 2)."""

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self) -> None:
            self.peak, self.warmup = float(peak), int(warmup_steps)
            self.total_steps = tf.Variable(int(total_steps), trainable=False, dtype=tf.int64, name="total_steps")

        def __call__(self, step: tf.Tensor) -> tf.Tensor:
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


def make_optimizer(
    cfg: TrainConfig, steps_per_epoch: int, total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """AdamW (or SGD) with linear warm-up to ``learning_rate`` then cosine decay to zero (one-cycle style) at
    ``total_steps`` (default ``cfg.epochs`` epochs); the warm-up takes at most a fifth of the run."""

    total = max(1, total_steps or cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(1, int(WARMUP_SHARE * total)), total - 1)
    schedule = warmup_cosine(cfg.learning_rate, warmup, total)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw":
        raise ValueError(f"optimizer must be adamw or sgd, not {cfg.optimizer!r}")
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)


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

    def targets(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
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

    def loss(self) -> keras.losses.Loss:
        owner = self

        class SelfDistilledCrossentropy(keras.losses.Loss):
            def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
                return keras.losses.categorical_crossentropy(owner.targets(y_true, y_pred), y_pred)

        return SelfDistilledCrossentropy(name="self_distilled_crossentropy")


def distiller_for(cfg: TrainConfig, n_images: int) -> SelfDistillation | None:
    """The run's self-distillation over ``n_images`` training images, or None when ``cfg.distill`` is off."""
    if cfg.distill <= 0:
        return None
    return SelfDistillation(n_images, cfg.distill, cfg.distill_momentum, cfg.label_smoothing)


def _label_accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    return keras.metrics.categorical_accuracy(y_true[:, :NUM_CLASSES], y_pred)


def compile_for_training(
    model: keras.Model,
    cfg: TrainConfig,
    steps_per_epoch: int,
    distiller: SelfDistillation | None = None,
    *,
    total_steps: int | None = None,
) -> None:
    """Compile ``model`` with the run's optimizer, label-smoothed (or self-distilled) loss and accuracy metric."""

    if distiller is None:
        loss: keras.losses.Loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics: list[str | keras.metrics.Metric] = ["accuracy"]
    else:  # targets carry an index column: accuracy on the label's columns only
        loss, metrics = distiller.loss(), [keras.metrics.MeanMetricWrapper(_label_accuracy, name="accuracy")]
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch, total_steps), loss=loss, metrics=metrics)


def make_callbacks(
    cfg: TrainConfig,
    log_to_mlflow: bool,
    val: Split | None = None,
    *,
    clock: BudgetClock | None = None,
    plan: EpochPlan | None = None,
    bar: tqdm | None = None,
    distiller: SelfDistillation | None = None,
) -> list[keras.callbacks.Callback]:
    """The run's callbacks: the time budget, then ``bar`` (a progress bar over the planned steps, if any), then
    the epoch reporter, which :func:`fit` reads the best epoch from (it is last). ``plan`` (default: ``cfg.epochs``
    of one step) is shared by all of them; ``clock`` is the time budget's view of the run (default: no budget)."""
    plan = plan or EpochPlan(cfg.epochs, 1, cfg.epochs)
    clock = clock or BudgetClock(0.0, None)
    # The budget first: the epoch line and metrics show the re-planned run.
    return [
        TimeBudget(plan, clock, bar=bar, log_to_mlflow=log_to_mlflow),
        *([StepBar(bar)] if bar is not None else []),
        *([DistillRamp(distiller, plan)] if distiller is not None else []),
        EpochReporter(plan, val, ema_decay=cfg.ema_decay, log_to_mlflow=log_to_mlflow),
    ]


class PlannedRun(Protocol):
    """What :func:`fit` reads of the time budget's plan (:class:`model_training.planning.RunPlan`, which imports this
    module to probe the speed: a protocol, not an import, keeps the two apart)."""

    @property
    def cap(self) -> int: ...

    @property
    def last_epoch_steps(self) -> int | None: ...

    @property
    def epoch_tail_seconds(self) -> float: ...


@dataclass
class FitResult:
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    epochs_run: int = 0


def fit(
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    log_to_mlflow: bool = False,
    budget: BudgetClock | None = None,
    plan: PlannedRun | None = None,
    init_weights: list[np.ndarray] | None = None,
) -> FitResult:
    """Build and train a model on ``train``; model choice (best epoch) by ``val`` accuracy. ``budget`` (the time
    budget's clock) keeps the run within ``cfg.time_budget``; ``plan`` (:func:`model_training.planning.plan_run`)
    says what was planned before the first epoch: ``cfg.epochs`` are then its epochs, and the budget may grow them
    back towards the plan's cap. ``init_weights``: start from these (a champion's, for fine-tuning) instead
    of a fresh initialization."""

    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {cfg.precision!r}")
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(
        cfg.arch, seed=cfg.seed, fused_batch_norm=True, mixed_precision=cfg.precision == "mixed_bfloat16"
    )
    if init_weights is not None:
        model.set_weights(init_weights)
    cap = plan.cap if plan is not None else cfg.epochs
    batches = make_batches(train.images, train.labels, cfg, epochs=cap)
    epochs = EpochPlan(
        cfg.epochs,
        batches.steps_per_epoch,
        cap,
        last_epoch_steps=plan.last_epoch_steps if plan is not None else None,
        tail_seconds=plan.epoch_tail_seconds if plan is not None else 0.0,
    )
    distiller = distiller_for(cfg, len(train.images))
    compile_for_training(model, cfg, batches.steps_per_epoch, distiller, total_steps=epochs.total_steps)
    t0 = time.perf_counter()
    # A bar over the training steps on a terminal (silent under cron and in logs); the epoch lines go above it.
    with progress_bar(epochs.total_steps, "train", unit="step") as bar:
        callbacks = make_callbacks(
            cfg,
            log_to_mlflow,
            val,
            clock=budget,
            plan=epochs,
            bar=None if bar.disable else bar,
            distiller=distiller,
        )
        hist = model.fit(
            batches.dataset,
            steps_per_epoch=batches.steps_per_epoch,
            epochs=cap,
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
