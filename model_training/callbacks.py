"""The fit loop's Keras callbacks, each with what it needs passed in: the time budget (:class:`TimeBudget`), the
epoch reporter that keeps the best validation epoch (:class:`EpochReporter`), the step bar and the
self-distillation ramp. They share one :class:`EpochPlan`, the number of epochs the run will train, which only the
time budget changes."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import keras
import mlflow
import numpy as np
import tensorflow as tf

from data_processing.preprocessing import to_model_batch

if TYPE_CHECKING:
    from tqdm import tqdm

    from data_processing.dataset import Split

log = logging.getLogger("model_training.fit")

EXTEND_UNTIL = 0.6  # the time budget's plan may still grow until this share of its epochs is done
RECENT_EPOCHS = 3  # the host's current speed: the median of this many latest epochs (one slow epoch is not a trend)
TRACE_STEPS = 3  # the first steps of a fit trace its graphs: not part of the pace


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


@dataclass
class EpochPlan:
    """What the run will train: ``epochs`` of ``steps_per_epoch`` steps (at most ``cap``; the time budget may change
    it), the last one cut to ``last_epoch_steps`` when not even one whole epoch fits the budget; ``tail_seconds`` is
    what an epoch is expected to spend after its last step (validation), until the first epoch measures it."""

    epochs: int
    steps_per_epoch: int
    cap: int
    last_epoch_steps: int | None = None
    tail_seconds: float = 0.0

    @property
    def total_steps(self) -> int:
        return (self.epochs - 1) * self.steps_per_epoch + (self.last_epoch_steps or self.steps_per_epoch)


@dataclass
class BudgetClock:
    """The time budget's view of the run: ``budget`` seconds from ``start`` (a reading of ``clock``), of which
    ``reserve()`` seconds are still needed after the fit."""

    budget: float
    start: float | None
    reserve: Callable[[], float] | None = None
    clock: Callable[[], float] = field(default=time.perf_counter)

    @property
    def active(self) -> bool:
        return self.budget > 0 and self.start is not None

    def elapsed(self) -> float:
        return self.clock() - (self.start or 0.0)

    def kept(self) -> float:
        return float(self.reserve()) if self.reserve is not None else 0.0


class TimeBudget(keras.callbacks.Callback):
    """Keeps the run within its budget: after each epoch the plan is checked at the latest epochs' pace
    (:func:`replan`: cut when it no longer fits, grown while early enough when more now fits), the first epoch at
    its own steady pace (its steps after the tracing ones, plus its validation) and only ever cut; the cosine decay
    is re-planned to end at zero where the run now ends. Within an epoch, a step that could no longer finish
    within the budget (with the epoch's validation and the time kept for after the fit) is not started. Logged, so
    the run can be repeated with ``--epochs N --time-budget 0``."""

    def __init__(
        self, plan: EpochPlan, clock: BudgetClock, *, bar: tqdm | None = None, log_to_mlflow: bool = False
    ) -> None:
        super().__init__()
        self.plan, self.clock, self.bar, self.log_to_mlflow = plan, clock, bar, log_to_mlflow
        self.later_epochs: list[float] = []  # seconds of each epoch from the second on (the first compiles too)
        self.first_steps: list[float] = []  # the first epoch's steps, for its steady pace
        self.recent_steps: deque[float] = deque(maxlen=64)  # the pace within an epoch
        self.tail_seconds = plan.tail_seconds  # what an epoch spends after its last step (validation, EMA scoring)
        self.epoch = 0
        self.t0 = self.t_step = 0.0
        self.cut_within_epoch = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self.t0 = self.t_step = self.clock.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock.clock()
        step, self.t_step = now - self.t_step, now
        if self.epoch == 0:
            self.first_steps.append(step)
        if self.epoch > 0 or batch >= TRACE_STEPS:
            self.recent_steps.append(step)
        last = self.plan.last_epoch_steps
        if last is not None and self.epoch + 1 >= self.plan.epochs and batch + 1 >= last:
            self.model.stop_training = True  # the plan ends within this epoch
        elif self.clock.active and self.recent_steps:
            pace = float(np.median(self.recent_steps))
            if self.clock.elapsed() + pace + self.tail_seconds + self.clock.kept() > self.clock.budget:
                log.warning(
                    "time budget %.0f s: stopping within epoch %d after step %d",
                    self.clock.budget,
                    self.epoch + 1,
                    batch + 1,
                )
                self.cut_within_epoch = self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = self.clock.clock() - self.t0
        self.tail_seconds = max(0.0, self.clock.clock() - self.t_step)
        if epoch >= 1:
            self.later_epochs.append(seconds)
        if self.clock.active and not self.cut_within_epoch and epoch + 1 < self.plan.epochs:
            if epoch == 0:
                # The first epoch traced the graphs: its pace is its steps after the tracing ones, plus validation.
                steady = self.first_steps[TRACE_STEPS:] or self.first_steps
                pace = float(np.median(steady)) * self.plan.steps_per_epoch + self.tail_seconds if steady else seconds
                self._replan(lambda *a: min(self.plan.epochs, plan_epochs(*a)), epoch, pace)
            else:
                recent = float(np.median(self.later_epochs[-RECENT_EPOCHS:]))
                self._replan(lambda *a: replan(self.plan.epochs, *a), epoch, recent)
        if epoch + 1 >= self.plan.epochs or self.cut_within_epoch:
            self.model.stop_training = True

    def _replan(self, rule: Callable[..., int], epoch: int, seconds: float) -> None:
        elapsed, kept = self.clock.elapsed(), self.clock.kept()
        planned = rule(self.plan.cap, epoch + 1, elapsed, seconds, self.clock.budget, kept)
        if planned == self.plan.epochs:
            return
        self.plan.epochs, self.plan.last_epoch_steps = planned, None
        schedule = getattr(self.model.optimizer, "_learning_rate", None)
        if hasattr(schedule, "total_steps"):
            schedule.total_steps.assign(self.plan.total_steps)
        if self.bar is not None:
            self.bar.total = self.plan.total_steps
            self.bar.refresh()
        log.info(
            "time budget %.0f s: %.0f s elapsed, %.1f s per epoch, %.0f s kept for after the fit -> %d epochs",
            self.clock.budget,
            elapsed,
            seconds,
            kept,
            planned,
        )
        if self.log_to_mlflow:
            mlflow.log_metrics({"epochs_planned": planned, "budget_epoch_seconds": seconds}, step=epoch + 1)


class EpochReporter(keras.callbacks.Callback):
    """Console progress + per-epoch MLflow metrics + keeps the best-validation-accuracy weights.

    With ``ema_decay > 0`` it also keeps an exponential moving average of every weight (BatchNorm's moving
    statistics included, so they match the averaged weights), updated in-graph after each step; each epoch the
    average is scored on ``val`` and the best epoch is chosen, and kept, by that score.
    """

    def __init__(self, plan: EpochPlan, val: Split, *, ema_decay: float, log_to_mlflow: bool = False) -> None:
        super().__init__()
        self.plan, self.val, self.ema_decay, self.log_to_mlflow = plan, val, ema_decay, log_to_mlflow
        self.best_acc = -1.0
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.t0 = 0.0
        self.ema: list[tf.Variable] = []
        self.ema_step = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.ema_decay <= 0:
            return
        live = self.model.weights
        self.ema = [tf.Variable(v, trainable=False) for v in live]
        self.val_x = to_model_batch(self.val.images)
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

        @tf.function
        def update(momentum: tf.Tensor) -> None:
            for avg, v in zip(self.ema, live, strict=True):
                avg.assign(momentum * avg + (1.0 - momentum) * tf.cast(v, avg.dtype))

        self._update = update

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.ema:
            self._update(tf.constant(ema_momentum(self.ema_decay, self.ema_step), tf.float32))
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
        return float(np.mean(np.argmax(probs, axis=1) == self.val.labels)), averaged

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
            self.plan.epochs,
            logs.get("loss", float("nan")),
            logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            val_acc,
            f"  ema {score:.4f}" if self.ema else "",
            " *" if improved else "  ",
            lr,
            seconds,
        )
        if self.log_to_mlflow:
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


def ema_momentum(decay: float, step: int) -> float:
    """EMA momentum at update ``step`` (0-based): ``decay``, ramped up over the first steps (TF's num_updates
    rule) so the average is not anchored to the random initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


class StepBar(keras.callbacks.Callback):
    """Moves a progress bar (``common.progress``) one step per training batch."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.bar.update(1)


class EpochRamped(Protocol):
    """What :class:`DistillRamp` drives (:class:`model_training.fit.SelfDistillation`)."""

    def start_epoch(self, epoch: int, planned: int) -> None: ...


class DistillRamp(keras.callbacks.Callback):
    """Sets the self-distillation target's weight for each epoch, of the plan as the time budget last left it."""

    def __init__(self, distiller: EpochRamped, plan: EpochPlan) -> None:
        super().__init__()
        self.distiller, self.plan = distiller, plan

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.distiller.start_epoch(epoch, self.plan.epochs)
