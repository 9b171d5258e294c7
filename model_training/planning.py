"""How a training run fits the machine it lands on, decided before its first epoch and logged: the arithmetic
(bfloat16 only where the CPU does it natively, :func:`choose_precision`), the training speed measured by a short
probe (:func:`probe_speed`), and the plan of epochs and recipe that fits the time budget at that speed
(:func:`plan_run`: the budget, less the time the work after the fit needs at that speed; when only a few epochs
fit, the recipe measured best for that many).

The machines of one kind differ: the run that trains 44 epochs of ~18 s in bfloat16 on an AMD Zen 4 (AVX-512
BF16) trains ~5 epochs of ~150 s in float32 on an AMD Zen 1 (AVX2), where bfloat16 is emulated at ~980 s an epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from common.hardware import CpuInfo
from model_training.config import TrainConfig

log = logging.getLogger("model_training.planning")

PRECISION_CHOICES = ("auto", "float32", "mixed_bfloat16")
PROBE_TRACE_STEPS = 3  # the probe's first steps trace the graphs: not timed
PROBE_STEPS = 12  # timed steps (median)
# The work after the fit (calibration, the test split and photo benchmark, the exported runtimes' conversion and
# parity, the drift reference, MLflow logging): a part that does not scale with the arithmetic (conversions, files,
# MLflow) and a part that does, in units of one forward pass over the validation split (the probe measures that
# pass). Measured in fresh-clone runs on a loaded 2-core host: 55 s after the fit at 1.15 s a pass (bfloat16,
# AVX-512), 74 s at 4.8 s a pass (float32, AVX2): ~49 s + ~5 passes; kept with a margin (docs/training.md, "A budget
# that holds on any machine"). 60 passes, the first estimate, kept 289 s on the AVX2 path and cost it an epoch.
AFTER_FIT_FIXED_SECONDS = 45.0
AFTER_FIT_VAL_PASSES = 15.0
# The outlier-exposure head's fit after calibration (unfamiliar_score "oe"): ~5,000 images through the network and
# nine L-BFGS fits on ~2,900 rows of 194 inputs, 10-14 CPU s on the 2-core AVX-512 host (benchmarks/bench_unfamiliar.py)
AFTER_FIT_HEAD_SECONDS = 15.0


@dataclass(frozen=True)
class PrecisionChoice:
    """The arithmetic a run trains in, and why."""

    precision: str
    requested: str
    reason: str

    def params(self) -> dict[str, str]:
        return {"precision_requested": self.requested, "precision_reason": self.reason[:500]}


def choose_precision(requested: str, cpu: CpuInfo, onednn: bool) -> PrecisionChoice:
    """``auto``: ``mixed_bfloat16`` where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX on x86, BF16 on
    Arm) and TensorFlow's oneDNN kernels (which use it) are on, else ``float32``; an explicit choice is kept, with a
    warning when bfloat16 would be emulated."""
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    native = cpu.native_bf16
    if requested != "auto":
        if requested == "mixed_bfloat16" and not (native and onednn):
            log.warning("mixed_bfloat16 was asked for, but bfloat16 is emulated here: expect ~6x slower epochs")
        return PrecisionChoice(requested, requested, "asked for (--precision / TRAIN_PRECISION)")
    if native and onednn:
        return PrecisionChoice("mixed_bfloat16", "auto", f"native bfloat16 ({', '.join(native)}) with oneDNN")
    if native:
        return PrecisionChoice("float32", "auto", "TensorFlow's oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0): bfloat16 "
                               "would be emulated")  # fmt: skip
    return PrecisionChoice(
        "float32", "auto", f"no native bfloat16 ({cpu.vector_isa}: no AVX-512 BF16 or AMX): bfloat16 would be emulated"
    )


@dataclass(frozen=True)
class SpeedProbe:
    """What a few training steps of the real model, pipeline and arithmetic took on this machine."""

    step_seconds: float  # one training step (median of the timed steps)
    eval_seconds: float  # one forward pass over the validation split
    seconds: float  # the probe itself: building, tracing, the steps and the pass
    steps: int

    def params(self) -> dict[str, float]:
        return {
            "probe_step_seconds": self.step_seconds,
            "probe_eval_seconds": self.eval_seconds,
            "probe_seconds": self.seconds,
        }


def probe_speed(train: Any, val: Any, cfg: TrainConfig, steps: int = PROBE_STEPS) -> SpeedProbe:
    """Train a throw-away copy of the run's model for a few steps on the run's own pipeline, and score the
    validation split once; the run itself starts afresh from its seed afterwards."""
    import keras
    import tensorflow as tf

    from data_processing.preprocessing import to_model_batch
    from model_training.data import make_batches
    from model_training.fit import compile_for_training
    from model_training.network import build_model

    t0 = time.perf_counter()
    model = build_model(cfg.arch, seed=cfg.seed, fused_batch_norm=True, mixed_precision=cfg.precision != "float32")
    n = min(len(train.images), (PROBE_TRACE_STEPS + steps) * cfg.batch_size)
    batches = make_batches(train.images[:n], train.labels[:n], replace(cfg, distill=0.0), epochs=1)
    compile_for_training(model, cfg, batches.steps_per_epoch)
    times: list[float] = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            times.append(time.perf_counter() - self.t)

    model.fit(batches.dataset, steps_per_epoch=batches.steps_per_epoch, epochs=1, verbose=0, callbacks=[Steps()],
              shuffle=False)  # fmt: skip
    forward = tf.function(model.__call__, reduce_retracing=True)
    x = to_model_batch(val.images)
    forward(x[:1000], training=False)  # traces
    t_eval = time.perf_counter()
    for i in range(0, len(x), 1000):
        np.asarray(forward(x[i : i + 1000], training=False))
    eval_seconds = time.perf_counter() - t_eval
    timed = times[PROBE_TRACE_STEPS:] or times
    keras.backend.clear_session()
    return SpeedProbe(float(np.median(timed)), eval_seconds, time.perf_counter() - t0, len(timed))


# The recipe for a run the budget cuts short, by the most epochs it applies to, chosen on validation
# (docs/training.md, "A budget that holds on any machine"): in a 5-epoch float32 run, the weight average (which spans
# ~1,000 steps, nearly the whole run) and the one-epoch warm-up waste what little training there is; without the
# average, at a peak rate of 0.006 and half an epoch of warm-up, validation reached 92.64 % against 92.08 % (test
# 91.90 % against 91.59 %, photos 89.15 % against 89.05 %). Measured at 5 epochs only, so applied up to 6.
SHORT_RECIPES: tuple[tuple[int, Mapping[str, Any]], ...] = (
    (6, {"ema_decay": 0.0, "learning_rate": 0.006, "warmup_epochs": 0.5}),
)
# Test accuracy (one view) by epochs trained, with the recipe the plan trains for that many (the short-run recipe
# up to 6 epochs; float32 from 3 to 8 epochs, issue 13's bfloat16 run at 44): what the log tells a machine to
# expect from the epochs it affords (docs/training.md, "A budget that holds on any machine").
EXPECTED_ACCURACY: tuple[tuple[int, float], ...] = ((3, 0.9005), (5, 0.9190), (8, 0.9260), (44, 0.9461))


def expected_accuracy(epochs: int) -> float | None:
    """Test accuracy the recipe reached at ``epochs`` epochs (interpolated between measured points)."""
    if not EXPECTED_ACCURACY:
        return None
    xs, ys = zip(*EXPECTED_ACCURACY, strict=True)
    return float(np.interp(epochs, xs, ys))


def short_recipe(epochs: int) -> dict[str, Any]:
    """The recipe's overrides for a run of ``epochs`` epochs ({} for the default recipe)."""
    for most, overrides in SHORT_RECIPES:
        if epochs <= most:
            return dict(overrides)
    return {}


@dataclass(frozen=True)
class RunPlan:
    """What the run will train, planned from the probe: ``epochs`` (the last cut to ``last_epoch_steps`` when not
    even one whole epoch fits), the recipe's overrides for that many epochs, and the numbers that decided it."""

    epochs: int
    cap: int
    epoch_seconds: float
    after_fit_seconds: float
    last_epoch_steps: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    epoch_tail_seconds: float = 0.0  # an epoch's validation (and the weight average's scoring)

    def config(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` as this plan trains it: its epochs and the short-run recipe (where the user kept the default)."""
        defaults = TrainConfig()
        kept = {k: v for k, v in self.recipe.items() if getattr(cfg, k) == getattr(defaults, k)}
        return replace(cfg, epochs=self.epochs, **kept)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "budget_epochs_afforded": self.epochs,
            "budget_epochs_cap": self.cap,
            "budget_epoch_seconds_probed": round(self.epoch_seconds, 2),
            "budget_after_fit_seconds": round(self.after_fit_seconds, 1),
            "budget_last_epoch_steps": self.last_epoch_steps or "-",
            "short_recipe": ",".join(f"{k}={v}" for k, v in sorted(self.recipe.items())) or "-",
        }
        expected = expected_accuracy(self.epochs)
        if expected is not None:
            out["expected_test_accuracy"] = round(expected, 4)
        return out

    def describe(self) -> str:
        expected = expected_accuracy(self.epochs)
        what = f"{self.epochs} of {self.cap} epochs"
        if self.last_epoch_steps:
            what += f" (the last cut to {self.last_epoch_steps} steps)"
        recipe = f"; short-run recipe {self.params()['short_recipe']}" if self.recipe else ""
        expect = f"; expect test accuracy ~{expected:.1%}" if expected is not None else ""
        pace = f"{self.epoch_seconds:.1f} s an epoch, {self.after_fit_seconds:.0f} s kept after the fit"
        return f"{what} at {pace}{recipe}{expect}"


def after_fit_seconds(probe: SpeedProbe) -> float:
    """Seconds the work after the fit needs at the probed speed."""
    return AFTER_FIT_FIXED_SECONDS + AFTER_FIT_VAL_PASSES * probe.eval_seconds


def plan_run(
    cfg: TrainConfig, probe: SpeedProbe, steps_per_epoch: int, elapsed: float, pending_seconds: float = 0.0
) -> RunPlan:
    """The epochs that fit ``cfg.time_budget`` at the probed speed, ``elapsed`` seconds into the run, keeping the
    work after the fit (and ``pending_seconds`` of other pending work, e.g. photo renders) for the end."""
    ema_passes = 2 if cfg.ema_decay > 0 else 1  # validation, and the weight average's own scoring
    epoch_seconds = probe.step_seconds * steps_per_epoch + ema_passes * probe.eval_seconds
    head = AFTER_FIT_HEAD_SECONDS if cfg.unfamiliar_score == "oe" else 0.0
    kept = after_fit_seconds(probe) + head + pending_seconds
    left = cfg.time_budget - elapsed - kept
    whole = int(left // epoch_seconds) if epoch_seconds > 0 else cfg.epochs
    if whole >= 1:
        epochs, last = min(cfg.epochs, whole), None
    else:  # not even one epoch fits: train what does, at least a few steps
        epochs = 1
        last = max(PROBE_TRACE_STEPS + 1, int((left - ema_passes * probe.eval_seconds) // probe.step_seconds))
        last = min(last, steps_per_epoch)
    recipe = short_recipe(epochs) if epochs < cfg.epochs else {}
    last = last if last != steps_per_epoch else None
    return RunPlan(epochs, cfg.epochs, epoch_seconds, kept, last, recipe, ema_passes * probe.eval_seconds)


# --- oneDNN on CPUs where TensorFlow leaves it off -----------------------------------------------------------------

ONEDNN_CACHE = "onednn-choice.json"
ONEDNN_PROBE_STEPS = 8
# A child process that times a few float32 training steps of the run's model on random images, with the oneDNN
# setting of its environment, and prints the median step in seconds (argv: arch, batch size, steps).
_ONEDNN_CHILD = """
import sys
import numpy as np
from common.logging import setup_logging
setup_logging(level="ERROR")
from data_processing.dataset import Split
from model_training.config import TrainConfig
from model_training.fit import configure_tensorflow
from model_training.planning import PROBE_TRACE_STEPS, probe_speed
arch, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
configure_tensorflow()
n = (PROBE_TRACE_STEPS + steps) * batch
rng = np.random.default_rng(0)
split = Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n), np.arange(n).astype(str))
cfg = TrainConfig(arch=arch, batch_size=batch, precision="float32", photo_aug=0.5)
val = Split(split.images[:batch], split.labels[:batch], split.keys[:batch])
print(probe_speed(split, val, cfg, steps).step_seconds)
"""


@dataclass(frozen=True)
class OneDnnChoice:
    """Whether TensorFlow trains with oneDNN, and why (``step_seconds``: the probe's timings, on and off)."""

    enabled: bool
    reason: str
    step_seconds: dict[str, float] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        timed = ",".join(f"{k}={v:.4f}" for k, v in sorted(self.step_seconds.items())) or "-"
        return {"onednn": "on" if self.enabled else "off", "onednn_reason": self.reason[:500], "onednn_probe": timed}


def _child_step_seconds(onednn: bool, arch: str, batch: int, environ: Mapping[str, str]) -> float:
    import subprocess
    import sys

    env = {**environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-c", _ONEDNN_CHILD, arch, str(batch), str(ONEDNN_PROBE_STEPS)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def choose_onednn(
    cpu: CpuInfo,
    cfg: TrainConfig,
    environ: Mapping[str, str],
    cache_dir: Any,
    measure: Any = _child_step_seconds,
) -> OneDnnChoice:
    """Whether float32 training should use oneDNN here: kept as set where ``TF_ENABLE_ONEDNN_OPTS`` is, and where
    TensorFlow turns it on by itself (CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX); on an x86 CPU where TensorFlow
    leaves it off (AVX2-only, e.g. AMD Zen 1-3), a few training steps are timed both ways in child processes and
    the faster is kept, once per CPU model (cached in ``cache_dir``). Call before TensorFlow is imported: apply the
    result with :func:`apply_onednn`."""
    import json
    from pathlib import Path

    from common.hardware import onednn_enabled

    raw = environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip()
    if raw:
        return OneDnnChoice(onednn_enabled(cpu, dict(environ)), f"set by TF_ENABLE_ONEDNN_OPTS={raw}")
    if onednn_enabled(cpu, {}):
        return OneDnnChoice(True, "TensorFlow's default on this CPU (AVX-512 VNNI/BF16, AVX-VNNI or AMX)")
    if not (cpu.is_x86 and cpu.has("avx2")) or cfg.precision != "float32":
        return OneDnnChoice(False, "TensorFlow's default on this CPU")
    path = Path(cache_dir) / ONEDNN_CACHE
    key = f"{cpu.describe()}|{cfg.arch}|{cfg.batch_size}"
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if cached is None:
        try:
            cached = {"on": measure(True, cfg.arch, cfg.batch_size, environ),
                      "off": measure(False, cfg.arch, cfg.batch_size, environ)}  # fmt: skip
        except Exception as exc:  # a probe that cannot run: keep TensorFlow's default
            log.warning("could not time oneDNN on this CPU (%s: %s): keeping it off", type(exc).__name__, exc)
            return OneDnnChoice(False, "TensorFlow's default on this CPU (the timing probe failed)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            known = json.loads(path.read_text()) if path.is_file() else {}
            path.write_text(json.dumps({**known, key: cached}, indent=1))
        except (OSError, ValueError):
            pass
        how = "timed now"
    else:
        how = "timed earlier on this CPU (cached)"
    on, off = float(cached["on"]), float(cached["off"])
    enabled = on < off
    reason = (f"float32 training step {on:.3f} s with oneDNN, {off:.3f} s without, on {cpu.vector_isa} "
              f"({how})")  # fmt: skip
    return OneDnnChoice(enabled, reason, {"on": on, "off": off})


def apply_onednn(choice: OneDnnChoice) -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS`` for this process (before TensorFlow is imported)."""
    import os

    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if choice.enabled else "0"


@dataclass(frozen=True)
class MachineChoices:
    """What training decided from the machine before TensorFlow loaded: the CPU, the arithmetic, oneDNN."""

    cpu: CpuInfo
    precision: PrecisionChoice
    onednn: OneDnnChoice

    def params(self) -> dict[str, str]:
        return {**self.cpu.params(), **self.precision.params(), **self.onednn.params()}

    def describe(self) -> str:
        return (f"{self.cpu.describe()} -> training in {self.precision.precision} ({self.precision.reason}); "
                f"oneDNN {'on' if self.onednn.enabled else 'off'} ({self.onednn.reason})")  # fmt: skip


def choose_for_machine(cfg: TrainConfig, assume: str | None, cache_dir: Any) -> MachineChoices:
    """The arithmetic and oneDNN setting for ``cfg`` on this machine (``assume``: ``CPU_ASSUME``), applied to this
    process; call before TensorFlow is imported."""
    import os

    from common.hardware import detect_cpu, onednn_enabled

    cpu = detect_cpu(assume)
    precision = choose_precision(cfg.precision, cpu, onednn_enabled(cpu))
    onednn = choose_onednn(cpu, replace(cfg, precision=precision.precision), os.environ, cache_dir)
    apply_onednn(onednn)
    return MachineChoices(cpu, precision, onednn)
