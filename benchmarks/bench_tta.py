"""Benchmark: what test-time augmentation adds to trained models, per set of views, on validation and test.

Usage: python benchmarks/bench_tta.py [--tracking-uri URI] [--storage-uri URI] MODEL [MODEL ...]
       MODEL is an MLflow model URI (``models:/refund-item-classifier/3``, ``runs:/<id>/model``,
       ``models:/m-<id>``) or a ``.keras`` file; a test-time-augmented model is unwrapped to its network.

For every model and every view set of :data:`inference.tta.TTA_VIEWS` plus two alternatives (diagonal
shifts, a 3 x 3 grid), it prints validation and test accuracy next to the network on the plain image alone (the
baseline, same run), then the mean over the models. No training: it evaluates models that exist. Choose views
on the validation columns; the test columns are reported, as in any research run.

Exit codes: 0 success; 1 a model or the processed splits could not be loaded; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common.hardware import describe as describe_cpu

ALTERNATIVES = {
    "diagonal5": ((0, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)),
    "grid9": tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
}


def load_network(uri: str) -> object:
    import keras
    import mlflow.keras

    from inference.tta import tta_of

    model = keras.models.load_model(uri, compile=False) if uri.endswith(".keras") else mlflow.keras.load_model(uri)
    return tta_of(model)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help="MLflow model URI or .keras file")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--storage-uri", default=None, help="store holding processed/ (default: STORAGE_URI)")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's

    import mlflow

    from common.settings import Settings
    from data_processing.preprocessing import to_model_batch
    from inference.tta import TTA_VIEWS, shift_images
    from model_training.data import load_splits
    from model_training.fit import configure_tensorflow

    configure_tensorflow()
    settings = Settings.from_env().with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        _, val, test = load_splits(settings)
        networks = [(uri, load_network(uri)) for uri in args.models]
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    view_sets = {**TTA_VIEWS, **ALTERNATIVES}
    splits = {"val": (to_model_batch(val.images), val.labels), "test": (to_model_batch(test.images), test.labels)}
    acc: dict[str, dict[str, list[float]]] = {name: {"val": [], "test": []} for name in view_sets}
    for uri, net in networks:
        print(f"\n{uri}")
        for split, (x, y) in splits.items():
            offsets = {v for views in view_sets.values() for v in views}  # each shifted copy predicted once
            probs = {v: net.predict(shift_images(x, *v), batch_size=1024, verbose=0) for v in offsets}
            for name, views in view_sets.items():
                acc[name][split].append(float(np.mean(np.mean([probs[v] for v in views], axis=0).argmax(1) == y)))
        for name in view_sets:
            a = acc[name]
            gain = a["test"][-1] - acc["none"]["test"][-1]
            print(f"  {name:10s} views {len(view_sets[name])}  val {a['val'][-1]:.4f}  test {a['test'][-1]:.4f}  "
                  f"(test {gain * 100:+.2f} points vs the image alone)")  # fmt: skip
    print(f"\n== mean over {len(networks)} model(s); baseline: 'none' (the network on the plain image) ==")
    for name, a in acc.items():
        gains = np.array(a["test"]) - np.array(acc["none"]["test"])
        print(f"  {name:10s} views {len(view_sets[name])}  val {np.mean(a['val']):.4f}  test {np.mean(a['test']):.4f}"
              f"  test gain {gains.mean() * 100:+.2f} points"
              f" (min {gains.min() * 100:+.2f}, max {gains.max() * 100:+.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
