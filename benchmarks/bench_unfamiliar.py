"""Benchmark: which unfamiliarity score tells things that are not one of the 10 classes from the items, per kind.

Usage: python benchmarks/bench_unfamiliar.py [--tracking-uri URI] [--storage-uri URI] [--share 0.05]
                                             [--per-kind-val N] [--per-kind-test N] [--with-real] [--photos-only]
                                             [--workers N]
                                             MODEL [...]
       MODEL is an MLflow model URI (``models:/refund-item-classifier@champion``, ``models:/m-<id>``).

For every model: fits the class-conditional Gaussians of the penultimate features on the training split
(:mod:`inference.unfamiliarity`), scores the in-distribution images (clean validation and test splits, the photo
benchmark's validation and test photos, the real-surface slice's) and the out-of-distribution benchmark
(:mod:`model_training.unfamiliar_bench`: objects, empty frames, textures, paperwork, digits, letters, photographed
and brought through THE preprocessing), and prints per score (``msp``, ``energy``, ``mahalanobis``,
``relative_mahalanobis``, ``relative_mahalanobis+energy``): the threshold that flags ``--share`` of the in-
distribution validation images (clean validation + validation photos; ``--photos-only`` the validation photos alone;
``--with-real`` adds the real-surface validation photos), the share it flags of each in-distribution test set, and
per kind the share of unfamiliar photos it catches and the AUROC, on the validation set of unfamiliar photos (for
choosing) and the test set (for reporting); then the cost of each score in FLOPs beside the network's and the
accuracy of each set of items. Prints the CPU model; the maximum softmax probability (``msp``, what the review
threshold already uses) is the baseline of the same run. No training: it evaluates models that exist. Rendering is
cached under ``DATA_DIR/cache/photo-bench``.

Exit codes: 0 success; 1 a model or the processed splits could not be loaded; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _common import add_model_arguments, cpu_model

from common.cli import read_settings
from common.logging import setup_logging
from common.storage import storage_from_settings
from data_processing.dataset import load_split


def _photo_sets(settings, val, test, workers: int) -> dict[str, object]:
    from model_training.config import TrainConfig
    from model_training.photo_bench import DEFAULT_PER_CLASS, cache_dir, render_set

    cfg, cache = TrainConfig(), cache_dir(settings.data_dir)
    out = {}
    for name, split, per_class in (
        ("val photos", val, cfg.photo_val_per_class),
        ("test photos", test, cfg.photo_test_per_class),
        ("real_val photos", val, DEFAULT_PER_CLASS["real_val"]),
        ("real_test photos", test, cfg.photo_real_test_per_class),
    ):
        tag = name.split()[0]
        out[name] = render_set(tag, split.images, split.labels, seed=cfg.photo_seed, per_class=per_class,
                               cache_dir=cache, workers=workers)  # fmt: skip
    return out


def _print_report(title: str, reports, kinds) -> None:
    print(f"  {title}")
    head = "".join(f"{k[:10]:>11s}" for k in ["all", *kinds])
    print(f"    {'score':27s} {'caught (share of unfamiliar photos flagged)':>10s}\n    {'':27s}{head}")
    for r in reports:
        print(f"    {r.score:27s}" + "".join(f"{r.caught[k]:11.1%}" for k in ["all", *kinds]))
    print(f"    {'AUROC':27s}")
    for r in reports:
        print(f"    {r.score:27s}" + "".join(f"{r.auroc[k]:11.3f}" for k in ["all", *kinds]))


def evaluate_model(uri: str, model, data: dict, ood: dict, args) -> None:
    from inference.unfamiliarity import (
        COMBINED,
        SCORES,
        FeatureExtractor,
        all_scores,
        feature_layer_name,
        fit_gaussians,
        fit_standardiser,
        score_flops,
        with_combined,
    )
    from model_training.network import count_flops, temperature_of
    from model_training.unfamiliar_bench import evaluate_scores

    temperature = temperature_of(model)
    extract = FeatureExtractor(model)
    f_train, _ = extract(data["train"].images)
    fit = fit_gaussians(f_train, data["train"].labels)
    scores, right = {}, {}
    for name, images, labels in data["sets"]:
        f, z = extract(images)
        scores[name] = all_scores(f, z, fit, temperature)
        if labels is not None:
            right[name] = z.argmax(axis=1) == labels
    in_names = [*([] if args.photos_only else ["val clean"]), "val photos"]
    in_names += ["real_val photos"] if args.with_real else []
    in_val = {s: np.concatenate([scores[n][s] for n in in_names]) for s in SCORES}
    standardiser = fit_standardiser(in_val)  # the combined score's scales, from the same validation images
    scores = {name: with_combined(s, standardiser) for name, s in scores.items()}
    in_val = with_combined(in_val, standardiser)
    names = (*SCORES, COMBINED)
    tests = {n: scores[n] for n in ("test clean", "test photos", "real_test photos")}
    print(f"\n{uri}: threshold flags {args.share:.0%} of {' + '.join(in_names)} "
          f"({sum(len(scores[n]['msp']) for n in in_names)} images); T = {temperature:.3f}")  # fmt: skip
    print("  accuracy: " + ", ".join(f"{n} {r.mean():.2%} ({len(r)})" for n, r in right.items()))
    kinds = list(dict.fromkeys(ood["test"].kinds.tolist()))
    reports = {}
    for split in ("val", "test"):
        reports[split] = evaluate_scores(in_val, tests, {s: scores[f"ood {split}"][s] for s in names},
                                         ood[split].kinds, args.share)  # fmt: skip
    print(f"    {'score':27s} {'threshold':>10s} " + "".join(f"{n:>18s}" for n in tests) + "   (share flagged)")
    for r in reports["test"]:
        print(f"    {r.score:27s} {r.threshold:10.3f} " + "".join(f"{r.flagged[n]:18.1%}" for n in tests))
    _print_report(f"unfamiliar validation photos ({len(ood['val'])}, for choosing)", reports["val"], kinds)
    _print_report(f"unfamiliar test photos ({len(ood['test'])}, for reporting)", reports["test"], kinds)
    dims = f_train.shape[1]
    net = count_flops(model)
    print(f"  cost per image (features: {feature_layer_name(model)}, {dims}): network {net / 1e6:.2f} MFLOPs; "
          + ", ".join(f"+{s} {score_flops(s, dims) / 1e6:.3f}" for s in names))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    settings = read_settings("bench_unfamiliar.py")
    if settings is None:
        return 2
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--share", type=float, default=0.05, help="share of in-distribution images flagged (0.05)")
    p.add_argument("--per-kind-val", type=int, default=100, help="unfamiliar validation photos per kind (100)")
    p.add_argument("--per-kind-test", type=int, default=200, help="unfamiliar test photos per kind (200)")
    p.add_argument("--with-real", action="store_true", help="real-surface photos among the in-distribution ones")
    p.add_argument("--photos-only", action="store_true",
                   help="the threshold on the validation photos alone (not with the clean split)")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes (all cores)")
    args = p.parse_args(argv)
    if not 0 < args.share < 1 or min(args.per_kind_val, args.per_kind_test, args.workers) < 1:
        p.error("--share must be in (0, 1); --per-kind-* and --workers at least 1")
    setup_logging(False, settings.log_level)
    settings = settings.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)

    # TensorFlow and MLflow load only when there is work: --help stays fast, and the rendering processes (spawned,
    # so they import this module again) do not load TensorFlow.
    import mlflow.keras

    from model_training.config import TrainConfig
    from model_training.photo_bench import cache_dir
    from model_training.unfamiliar_bench import render_unfamiliar_set

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        storage = storage_from_settings(settings)
        train, val, test = (load_split(storage, s) for s in ("train", "val", "test"))
        models = {uri: mlflow.keras.load_model(uri) for uri in args.models}
    except Exception as exc:  # a benchmark reports what it could not load and stops
        print(f"could not load: {exc}")
        return 1
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f}")
    seed, cache = TrainConfig().photo_seed, cache_dir(settings.data_dir)
    photos = _photo_sets(settings, val, test, args.workers)
    ood = {
        split: render_unfamiliar_set(split, per_kind=n, seed=seed, cache_dir=Path(cache), workers=args.workers)
        for split, n in (("val", args.per_kind_val), ("test", args.per_kind_test))
    }
    sets = [("val clean", val.images, val.labels), ("test clean", test.images, test.labels)]
    sets += [(name, s.images, s.labels) for name, s in photos.items()]
    sets += [(f"ood {split}", s.images, None) for split, s in ood.items()]
    for uri, model in models.items():
        evaluate_model(uri, model, {"train": train, "sets": sets}, ood, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
