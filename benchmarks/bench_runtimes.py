"""Model-only benchmark: every inference runtime on the same model and the same test split, side by side.

Usage: python benchmarks/bench_runtimes.py [MODEL_URI ...] [--tracking-uri URI] [--storage-uri URI]
                                           [--threads 1] [--repeats 5] [--json PATH]

For each model (default ``models:/refund-item-classifier@champion``), and for its network alone when the served
model averages test-time views, it converts the Keras model to each runtime of :mod:`inference.exporting` and prints,
per runtime: milliseconds per call at batch 1, images/s at batch 1,024 (median of ``--repeats``), test accuracy,
top-class agreement with Keras and the largest probability difference, plus the model's MFLOPs per image. The
baselines are measured in the same run: ``model.predict`` (the seed's way) and the Keras graph (``tf.function``).
``--threads`` is each runtime's intra-op thread count (1 = what an API worker or the batch job's scorer uses).

Exit codes: 0 done; 2 usage; 3 model or test split unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from _runtimes import speed

from common.hardware import describe as describe_cpu
from common.settings import Settings
from inference.predictor import Scores

RUNTIMES = ("keras-predict", "keras-graph", "onnx", "litert", "litert-int8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model URIs (default: the champion)")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--storage-uri", help="store holding processed/test.npz (default: STORAGE_URI)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per measurement; the median is reported")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return p


def measure(name: str, model, x: np.ndarray, y: np.ndarray, threads: int, repeats: int) -> list[dict]:
    from inference.exporting import convert, load_runtime
    from inference.runtimes import KerasGraphRuntime, configure_tensorflow_threads
    from model_training.network import count_flops

    configure_tensorflow_threads(threads, threads)
    graph = KerasGraphRuntime(model)
    ref = np.concatenate([graph.run(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    flops = count_flops(model) / 1e6
    rows = []
    loaded: dict[str, object] = {"keras-graph": graph}
    for kind in RUNTIMES:
        if kind == "keras-predict":
            run = lambda b: model.predict(b, batch_size=1024, verbose=0)  # noqa: E731
        elif kind == "keras-graph":
            run = graph.run
        else:
            loaded[kind] = load_runtime(kind, convert(model, kind), threads=threads)
            run = loaded[kind].run
        out = ref if kind == "keras-graph" else np.concatenate([run(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        # A model with the unfamiliarity score answers an 11th column: accuracy and agreement are over the 10 classes.
        probs, ref_probs = Scores.of(out).probs, Scores.of(ref).probs
        ms, ips = speed(run, repeats)
        row = {
            "model": name,
            "runtime": kind,
            "batch1_ms": ms,
            "batch1024_images_per_s": ips,
            "test_accuracy": float(np.mean(probs.argmax(1) == y)),
            "agreement": float(np.mean(probs.argmax(1) == ref_probs.argmax(1))),
            "max_prob_diff": float(np.max(np.abs(probs - ref_probs))),
            "mflops": flops,
            "_runtime": loaded.get(kind),
        }
        rows.append(row)
        print(
            f"{name:<22} {kind:<14} {ms:8.3f} ms  {ips:9,.0f} img/s  acc {row['test_accuracy']:.4f}  "
            f"agree {row['agreement']:.4f}  maxdiff {row['max_prob_diff']:.1e}  {flops:.1f} MFLOPs",
            flush=True,
        )
    return rows


def choices(rows: list[dict], threads: int) -> list[dict]:
    """Per path (the API at batch 1, the night at 1,024), the fastest runtime here that passes parity by this
    benchmark's own numbers, and what the project's choice (:func:`inference.choice.choose`, its own short timing)
    picks among the same runtimes; the chosen one is within 10 % of the fastest when ``ratio`` <= 1.10."""
    from inference.choice import API, BATCH, choose
    from inference.exporting import MIN_AGREEMENT

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and r["_runtime"] is not None and r["agreement"] >= MIN_AGREEMENT]
        for path, key, per_image in ((API, "batch1_ms", True), (BATCH, "batch1024_images_per_s", False)):
            cost = {r["runtime"]: (r[key] if per_image else 1000 / r[key]) for r in ok}  # ms per image
            fastest = min(cost, key=cost.get)
            choice, _ = choose({r["runtime"]: (lambda r=r: r["_runtime"]) for r in ok}, path=path, threads=threads,
                               cpu=describe_cpu())  # fmt: skip
            ratio = cost[choice.chosen] / cost[fastest]
            out.append({"model": model, "path": path.name, "batch": path.batch, "fastest": fastest,
                        "chosen": choice.chosen, "ratio": ratio, "timings_ms": choice.timings_ms})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    print(f"CPU: {describe_cpu()}", flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings.from_env().with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)
    try:
        import mlflow
        import mlflow.keras

        from common.storage import storage_from_settings
        from data_processing.dataset import load_split
        from data_processing.preprocessing import to_model_batch
        from inference.tta import tta_of
        from inference.versions import resolve_model

        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        test = load_split(storage_from_settings(settings), "test")
        x, y = to_model_batch(test.images), test.labels
        models = []
        for uri in args.models or [settings.model_uri]:
            info = resolve_model(uri, settings.mlflow_tracking_uri)
            models.append((f"{info.name} v{info.version}", mlflow.keras.load_model(info.pinned_uri)))
    except Exception as exc:
        print(f"error: model or test split unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(
        f"{len(y):,} test images; {args.threads} thread(s) per runtime; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.1f}; baselines: keras-predict (model.predict), keras-graph (tf.function)",
        flush=True,
    )
    rows = []
    for name, model in models:
        network, views = tta_of(model)
        rows += measure(f"{name} ({len(views)} view{'s' * (len(views) > 1)})", model, x, y, args.threads, args.repeats)
        if len(views) > 1:
            rows += measure(f"{name} (network alone)", network, x, y, args.threads, args.repeats)
    print("\n| model | runtime | batch 1, ms | batch 1,024, images/s | test accuracy | agreement | MFLOPs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["runtime"] == "keras-graph")
        print(
            f"| {r['model']} | {r['runtime']} | {r['batch1_ms']:.3f} | {r['batch1024_images_per_s']:,.0f} "
            f"(x{r['batch1024_images_per_s'] / base['batch1024_images_per_s']:.1f}) | {r['test_accuracy']:.2%} | "
            f"{r['agreement']:.2%} | {r['mflops']:.1f} |"
        )
    print(f"(x: speed against keras-graph at batch 1,024; load average now {os.getloadavg()[0]:.1f})")
    picked = choices(rows, args.threads)
    print("\n| model | path | batch | fastest here (this benchmark) | chosen (inference.choice) | chosen / fastest |")
    print("|---|---|---|---|---|---|")
    for c in picked:
        verdict = "within 10 %" if c["ratio"] <= 1.10 else "NOT within 10 %"
        print(f"| {c['model']} | {c['path']} | {c['batch']:,} | {c['fastest']} | {c['chosen']} | "
              f"x{c['ratio']:.2f} ({verdict}) |")  # fmt: skip
    if args.json:
        clean = [{k: v for k, v in r.items() if k != "_runtime"} for r in rows]
        args.json.write_text(json.dumps({"rows": clean, "choices": picked}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
