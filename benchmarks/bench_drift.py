"""Request-path cost of the drift window, and the cost of one drift evaluation.

Usage:
    python benchmarks/bench_drift.py [--adds 20000] [--repeats 5]

Prints medians over ``--repeats`` runs of:
* ``FeatureWindow.add`` of a one-item batch (what one /predict call does), in memory and shared through a
  directory (background flushes), against the baseline of writing each item through to a file on the request
  path;
* ``evaluate_drift`` on a 500-item window against a 6000-item reference, against the baseline of
  ``scipy.stats.ks_2samp`` per feature.

Exit codes: 0 always (a measurement, not a check).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from common.hardware import describe as describe_cpu
from model_serving.window import FeatureWindow
from monitoring.drift import evaluate_drift
from monitoring.features import item_features
from monitoring.reference import build_reference


def fake_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(0, 3, (n, 10))
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return (rng.random((n, 28, 28)) ** 3 * 255).astype(np.uint8), p.astype(np.float32)


def time_adds(add, items: list[dict[str, np.ndarray]]) -> float:
    t = time.perf_counter()
    for f in items:
        add(f)
    return (time.perf_counter() - t) / len(items) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adds", type=int, default=20000, help="add() calls per repeat")
    p.add_argument("--repeats", type=int, default=5, help="repeats (medians are reported)")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    rng = np.random.default_rng(0)
    one = [item_features(*fake_batch(1, rng)) for _ in range(200)]
    items = [one[i % len(one)] for i in range(args.adds)]

    results: dict[str, list[float]] = {"memory": [], "directory": [], "baseline_write_through": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            results["memory"].append(time_adds(FeatureWindow(500).add, items))
            w = FeatureWindow(500, Path(tmp) / f"w{r}")
            results["directory"].append(time_adds(w.add, items))
            w.flush()
            path = Path(tmp) / f"through{r}.bin"

            def write_through(f: dict[str, np.ndarray], path: Path = path) -> None:
                row = np.array([f[k][0] for k in sorted(f)], dtype="<f8").tobytes()
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, row)
                finally:
                    os.close(fd)

            results["baseline_write_through"].append(time_adds(write_through, items))

    base = statistics.median(results["baseline_write_through"])
    print(f"FeatureWindow.add, one-item batch, median of {args.repeats} x {args.adds} calls:")
    for name, vals in results.items():
        med = statistics.median(vals)
        print(f"  {name:<24} {med:8.2f} us/call   ({base / med:5.1f}x faster than write-through)")

    ref = build_reference(*fake_batch(6000, rng))
    window = item_features(*fake_batch(500, rng))
    evaluate_drift(ref, window)  # warm the reference's caches, as a long-running server does
    ours, scipy_ks = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(20):
            evaluate_drift(ref, window)
        ours.append((time.perf_counter() - t) / 20 * 1e3)
        t = time.perf_counter()
        for _ in range(20):
            for k in ref.features:
                if k != "predicted_class":
                    stats.ks_2samp(ref.features[k], window[k], method="asymp")
        scipy_ks.append((time.perf_counter() - t) / 20 * 1e3)
    mo, ms = statistics.median(ours), statistics.median(scipy_ks)
    print("evaluate_drift, 500-item window vs 6000-item reference:")
    print(f"  evaluate_drift (all tests + effect sizes) {mo:7.2f} ms")
    print(f"  baseline: scipy ks_2samp per feature    {ms:7.2f} ms   (ratio {ms / mo:4.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
