"""Benchmark: one full default training run, then the trained model's quality, size and inference speed.

Usage: python benchmarks/bench_training.py [--repeats N] [--tracking-uri URI] [-- TRAIN_ARGS...]
       e.g. ``python benchmarks/bench_training.py`` (the real default run: trains, registers, promotes)
            ``python benchmarks/bench_training.py -- --limit 2000 --epochs 1 --no-register`` (smoke check)

It runs ``python model_training/train.py TRAIN_ARGS`` as a child process and measures the child's wall time
and CPU time itself (the load average is printed too: on a shared machine wall time depends on neighbours).
Then it reads test accuracy, macro F1, the photo benchmark and calibration numbers from that run in MLflow,
loads the logged model, counts parameters and FLOPs per image, and measures model-only inference throughput
(images/s, median of ``--repeats`` rounds) at batch 1 and batch 1,024 through a compiled ``tf.function`` (the
serving path) and through ``model.predict`` (the baseline), printing both and their ratio. For a
test-time-augmented model it also prints the network alone (one view), also through the numpy runtime the API
uses for a single-view model's single images.

Exit codes: 0 success; 1 the training run failed or its results could not be read; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.hardware import describe as describe_cpu
from common.settings import PROJECT_ROOT, Settings

_DONE = re.compile(r"^DONE .*run=(?P<run_id>[0-9a-f]+)", re.MULTILINE)


def run_training(train_args: list[str], env: dict[str, str]) -> tuple[str, float, float, int]:
    """Run train.py as a child; returns (run_id, wall seconds, child CPU seconds, exit code)."""
    cmd = [sys.executable, str(PROJECT_ROOT / "model_training" / "train.py"), *train_args]
    print(f"$ {' '.join(cmd)}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "model_training" in line or line.startswith("DONE"):
            print("  | " + line.rstrip(), flush=True)
    code = proc.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = _DONE.search("".join(lines))
    return (m["run_id"] if m else ""), wall, cpu, code


def images_per_second(fn: Callable[[], object], batch: int, calls: int, repeats: int) -> float:
    """Images/s at the median time per call over ``repeats`` rounds of ``calls`` calls."""
    from _runtimes import median_seconds

    return batch / median_seconds(fn, calls, repeats)


@dataclass(frozen=True)
class Trained:
    """The training run as this benchmark measured it from outside."""

    train_args: list[str]
    run_id: str
    wall: float  # seconds
    cpu: float  # the child's CPU seconds
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timing rounds per inference measurement (median)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's

    settings = Settings.from_env().with_overrides(mlflow_tracking_uri=args.tracking_uri)
    env = dict(os.environ, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri, PYTHONUNBUFFERED="1")
    load_before = os.getloadavg()
    run_id, wall, cpu, code = run_training(train_args, env)
    load_after = os.getloadavg()
    if code != 0 or not run_id:
        print(f"training failed (exit {code})", file=sys.stderr)
        return 1
    trained = Trained(train_args, run_id, wall, cpu, load_before, load_after)
    report(trained, measure_model(settings.mlflow_tracking_uri, run_id, args.repeats), args.repeats)
    return 0


@dataclass(frozen=True)
class Measured:
    """The run's logged model and its inference speeds (images/s unless named ``_ms``)."""

    run: Any  # mlflow.entities.Run
    model: Any  # the served Keras model
    network: Any  # the network alone, without test-time views
    views: list
    threads: int
    exported: Any  # the exported runtime, or None
    exported_ms: float
    exported1024: float
    fast1: float
    base1: float
    fast1024: float
    base1024: float
    net1: float
    net1024: float


def measure_model(tracking_uri: str, run_id: str, repeats: int) -> Measured:
    """The run's logged model and its inference speeds: through a compiled ``tf.function`` and ``model.predict``
    (the baseline), of the network alone, and of the runtime training exported (when there is one)."""
    import mlflow
    import tensorflow as tf
    from _runtimes import speed
    from mlflow import MlflowClient

    from inference.loading import RuntimeUnavailable, predictor_from_directory
    from inference.tta import tta_of
    from inference.versions import ModelInfo
    from model_training.fit import configure_tensorflow

    threads = configure_tensorflow()
    mlflow.set_tracking_uri(tracking_uri)
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    model = mlflow.keras.load_model(run.data.tags["model_uri"])  # set by train.py: the logged model

    rng = np.random.default_rng(0)
    x1 = rng.random((1, 28, 28, 1), dtype=np.float32)
    x1024 = rng.random((1024, 28, 28, 1), dtype=np.float32)

    def compiled(m: object) -> Callable[[np.ndarray], object]:
        return tf.function(
            lambda x: m(x, training=False),
            input_signature=[tf.TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32)],
            reduce_retracing=True,
        )

    fn = compiled(model)
    network, views = tta_of(model)
    net_fn = compiled(network)
    try:  # the runtime training exported for the served model (runtime/ in the same run)
        exported_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="runtime")
        info = ModelInfo("benchmark", "run", None, run_id, run_id)
        exported = predictor_from_directory(Path(exported_dir), info).runtime
        exported_ms, exported1024 = speed(exported.run, repeats)
    except RuntimeUnavailable as exc:
        exported, exported_ms, exported1024 = None, float("nan"), float("nan")
        print(f"no exported runtime: {exc}")
    r = repeats
    return Measured(
        run,
        model,
        network,
        views,
        threads,
        exported,
        exported_ms,
        exported1024,
        fast1=images_per_second(lambda: fn(x1).numpy(), 1, 300, r),
        base1=images_per_second(lambda: model.predict(x1, verbose=0), 1, 20, r),
        fast1024=images_per_second(lambda: fn(x1024).numpy(), 1024, 3, r),
        base1024=images_per_second(lambda: model.predict(x1024, batch_size=1024, verbose=0), 1024, 3, r),
        net1=images_per_second(lambda: net_fn(x1).numpy(), 1, 300, r),
        net1024=images_per_second(lambda: net_fn(x1024).numpy(), 1024, 3, r),
    )


def report(trained: Trained, m: Measured, r: int) -> None:
    """Print the run's quality (from MLflow), its cost and size (measured here), then the inference speeds."""
    from model_training.network import count_flops

    flops = count_flops(m.model)
    print_quality(trained.train_args, trained.run_id, m.run, m.views)
    wall, cpu, fit_seconds = trained.wall, trained.cpu, m.run.data.metrics["training_seconds"]
    print(f"wall time (whole run)   : {wall:.0f} s = {wall / 60:.1f} min  (fit {fit_seconds:.0f} s)")
    print(f"child CPU time          : {cpu:.0f} s  (= {cpu / wall:.2f} cores busy on average of {os.cpu_count()})")
    print(f"load average before/after: {trained.load_before[0]:.1f} / {trained.load_after[0]:.1f}")
    print(f"params                  : {m.model.count_params():,}")
    print(
        f"FLOPs per image         : {flops / 1e6:.1f} MFLOPs ({flops // 2 / 1e6:.1f} M multiply-adds)"
        f"; network alone {count_flops(m.network) / 1e6:.1f} MFLOPs"
    )
    print(f"== model-only inference (images/s, median of {r}, {m.threads} TF threads) ==")
    print(
        f"batch 1    tf.function  : {m.fast1:10,.0f}   model.predict (baseline): {m.base1:10,.0f}   "
        f"x{m.fast1 / m.base1:.1f}"
    )
    print(
        f"batch 1024 tf.function  : {m.fast1024:10,.0f}   model.predict (baseline): {m.base1024:10,.0f}   "
        f"x{m.fast1024 / m.base1024:.2f}"
    )
    print(
        f"network alone, tf.function: batch 1 {m.net1:10,.0f}   batch 1024 {m.net1024:10,.0f}   "
        f"(served/alone at 1024: x{m.fast1024 / m.net1024:.2f})"
    )
    if m.exported is not None:
        print(
            f"exported runtime ({m.exported.name}, served model): batch 1 {m.exported_ms:.3f} ms = "
            f"{1000 / m.exported_ms:,.0f} images/s, batch 1024 {m.exported1024:,.0f} images/s "
            f"(x{m.exported1024 / m.fast1024:.1f} vs tf.function)"
        )


def print_quality(train_args: list[str], run_id: str, run: Any, views: list) -> None:
    """The run's quality as it logged it in MLflow."""
    metrics, params = run.data.metrics, run.data.params
    print()
    print("== training (default run, measured by this benchmark) ==")
    print(f"train args              : {' '.join(train_args) or '(defaults)'}  epochs={params.get('epochs')}")
    print(
        f"run id / registered     : {run_id} / version {run.data.tags.get('registered_version', '-')}"
        f" (promoted={run.data.tags.get('promoted', '-')})"
    )
    print(f"test accuracy           : {metrics['test_accuracy']:.4f}  (served model, {len(views)} view(s))")
    if "test_accuracy_single_view" in metrics:
        print(f"  network alone         : {metrics['test_accuracy_single_view']:.4f}  (plain image, no test views)")
    print(
        f"best val acc (epoch)    : {metrics['best_val_accuracy']:.4f} ({metrics['best_epoch']:.0f}); served model "
        f"on val {metrics.get('val_accuracy_served', float('nan')):.4f}"
    )
    print(f"test macro F1           : {metrics['test_macro_f1']:.4f}")
    if "photo_test_accuracy" in metrics:
        print(
            f"photo benchmark         : test {metrics['photo_test_accuracy']:.4f}, val "
            f"{metrics['photo_val_accuracy']:.4f}; worst class {metrics['photo_test_worst_class_gap'] * 100:.1f} "
            "points below its clean test accuracy"
        )
        print(
            f"calibration (T={metrics['temperature']:.2f})     : ECE test {metrics['test_ece_before']:.4f} -> "
            f"{metrics['test_ece']:.4f}, photos {metrics['photo_test_ece_before']:.4f} -> "
            f"{metrics['photo_test_ece']:.4f}; wrong and confident: test "
            f"{metrics['test_confident_error_share'] * 100:.2f} %, photos "
            f"{metrics['photo_test_confident_error_share'] * 100:.2f} %"
        )


if __name__ == "__main__":
    raise SystemExit(main())
