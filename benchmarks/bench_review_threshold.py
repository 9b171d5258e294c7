"""Benchmark: how the review threshold is chosen on the validation photos, and what it gives on the test photos.

Usage: python benchmarks/bench_review_threshold.py [--tracking-uri URI] [--storage-uri URI] [--z Z ...] MODEL [...]
       MODEL is an MLflow model URI (``models:/refund-item-classifier@champion``, ``models:/m-<id>``).

For every model it scores the photo benchmark (validation and test photos, rendered or from the local cache, as a
training run does) and, for each margin ``z`` (standard errors below the 2 % target, on the validation photos),
prints the threshold chosen on the validation photos, then the share of test-photo answers that are wrong and at or
above it, and the share of answers sent to a person (photos and clean test images). ``z = 0`` (aiming at exactly
2 %) is the baseline of the same run; training uses ``z = 1.645`` (``report.REVIEW_MARGIN_Z``; ``z = 1`` before).
No training: it evaluates models that exist.

Exit codes: 0 success; 1 a model or the processed splits could not be loaded; 2 bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import add_model_arguments

from common.cli import read_settings
from common.hardware import describe as describe_cpu
from common.logging import setup_logging
from common.storage import storage_from_settings
from data_processing.dataset import load_split
from model_training import evaluation as ev
from model_training.config import TrainConfig
from model_training.photo_bench import render_set


def main(argv: list[str] | None = None) -> int:
    settings = read_settings("bench_review_threshold.py")
    if settings is None:
        return 2
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--z", type=float, nargs="+", default=[0.0, 1.0, 1.645], help="margins in standard errors")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    setup_logging(False, settings.log_level)
    settings = settings.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)

    # TensorFlow and MLflow load only when there is work: --help stays fast, and the photo-rendering processes
    # (spawned, so they import this module again) do not load TensorFlow.
    import mlflow.keras

    from model_training.report import CONFIDENT_ERROR_TARGET, predict_probs

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        storage = storage_from_settings(settings)
        val, test = load_split(storage, "val"), load_split(storage, "test")
        models = {uri: mlflow.keras.load_model(uri) for uri in args.models}
    except Exception as exc:  # a benchmark reports what it could not load and stops
        print(f"could not load: {exc}")
        return 1
    cfg, cache = TrainConfig(), Path(settings.data_dir) / "cache" / "photo-bench"
    seed = cfg.photo_seed
    pv = render_set("val", val.images, val.labels, seed=seed, per_class=cfg.photo_val_per_class, cache_dir=cache)
    pt = render_set("test", test.images, test.labels, seed=seed, per_class=cfg.photo_test_per_class, cache_dir=cache)
    print(f"photo benchmark: {len(pv)} validation and {len(pt)} test photos; target {CONFIDENT_ERROR_TARGET:.0%}")
    print(f"{'model':44s} {'z':>5s} {'val aim':>8s} {'thr':>6s} {'test wrong&conf':>16s} {'review photos':>14s} "
          f"{'review clean':>13s}")  # fmt: skip
    for uri, model in models.items():
        vp, tp, cp = predict_probs(model, pv.images), predict_probs(model, pt.images), predict_probs(model, test.images)
        for z in args.z:
            aim = ev.share_with_margin(CONFIDENT_ERROR_TARGET, len(pv), z)
            thr = ev.threshold_for_error_share(vp, pv.labels, aim)
            wrong = ev.confident_error_share(tp, pt.labels, thr)
            print(f"{uri:44s} {z:5.3g} {aim:8.2%} {thr:6.3f} {wrong:16.2%} "
                  f"{np.mean(tp.max(axis=1) < thr):14.1%} {np.mean(cp.max(axis=1) < thr):13.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
