"""Benchmark: which unfamiliarity score tells things that are not one of the 10 classes from the items, per kind.

Usage: python benchmarks/bench_unfamiliar.py [--tracking-uri URI] [--storage-uri URI] [--share 0.05]
                                             [--per-kind-val N] [--per-kind-test N] [--with-real] [--photos-only]
                                             [--per-kind-train N] [--fit-per-class N] [--fit-clean N]
                                             [--no-loko] [--workers N]
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
accuracy of each set of items. Then outlier exposure (``--per-kind-train`` > 0): the served statistics as training
fits them, and on the same model the combined score against the head (:func:`inference.unfamiliarity.choose_head`)
fitted on photos of training items (``--fit-per-class`` per class by each renderer, plain and real surface) and
``--fit-clean`` clean training images against the unfamiliar training photos (split tag 23), its penalty chosen on
the validation photos against the unfamiliar validation photos; both thresholds flag ``--share`` of the validation
photos (benchmark + real-surface slice, as training chooses it); per score the share flagged of the clean test
split, the test photos, the real-surface test photos and both photo sets, and per kind the share caught and the
AUROC; and leave-one-kind-out: per kind, the head fitted and chosen without that kind, caught on that kind (how it
does on things it never saw). Prints the CPU model; the maximum softmax probability (``msp``, what the review
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


def _photo_sets(settings, splits, workers: int, fit_per_class: int) -> dict[str, object]:
    from model_training.config import TrainConfig
    from model_training.photo_bench import DEFAULT_PER_CLASS, cache_dir, render_set

    cfg, cache = TrainConfig(), cache_dir(settings.data_dir)
    train, val, test = splits
    out = {}
    jobs = [
        ("val photos", val, cfg.photo_val_per_class),
        ("test photos", test, cfg.photo_test_per_class),
        ("real_val photos", val, DEFAULT_PER_CLASS["real_val"]),
        ("real_test photos", test, cfg.photo_real_test_per_class),
    ]
    if fit_per_class:  # the outlier-exposure head's in-distribution side: photos of training items
        jobs += [("train photos", train, fit_per_class), ("real_train photos", train, fit_per_class)]
    for name, split, per_class in jobs:
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
        OE,
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
    f_train, z_train = extract(data["train"].images)
    fit = fit_gaussians(f_train, data["train"].labels)
    scores, right, outputs = {}, {}, {"train clean": (f_train, z_train)}
    for name, images, labels in data["sets"]:
        f, z = outputs[name] = extract(images)
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
          + ", ".join(f"+{s} {score_flops(s, (dims)) / 1e6:.3f}" for s in (*names, OE)))  # fmt: skip
    if "ood train" in outputs:
        evaluate_head(outputs, f_train, data, kinds, args)


def _head_inputs(outputs: dict, f_train, data: dict, args):
    """The served statistics as training fits them, and the head's rows (model_training.unfamiliar_bench)."""
    from inference.unfamiliarity import fit_stats, head_rows
    from model_training.unfamiliar_bench import HeadData, clean_subsample

    refs = [outputs[n] for n in ("val clean", "val photos", "real_val photos")]
    stats = fit_stats(f_train, data["train"].labels, *(np.concatenate([r[i] for r in refs]) for i in (0, 1)))
    rows = {name: head_rows(f, z, stats) for name, (f, z) in outputs.items() if name != "train clean"}
    sub = clean_subsample(np.arange(len(data["train"].images)), args.fit_clean, seed=data["seed"])
    train_clean = head_rows(f_train[sub], outputs["train clean"][1][sub], stats)
    ood_kinds = {split: data["ood"][split].kinds for split in ("train", "val")}
    head = HeadData(np.concatenate([rows["train photos"], rows["real_train photos"], train_clean]), rows["ood train"],
                    ood_kinds["train"], np.concatenate([rows["val photos"], rows["real_val photos"]]),
                    rows["ood val"], ood_kinds["val"])  # fmt: skip
    return stats, head


def evaluate_head(outputs: dict, f_train, data: dict, kinds: list[str], args) -> None:
    """The combined score against the outlier-exposure head on the same model: the threshold flags ``--share`` of
    the in-distribution validation photos (benchmark + real-surface slice, as training chooses it), then what each
    flags of the in-distribution test sets and catches of the unfamiliar test photos; and leave-one-kind-out."""
    import time

    from inference.unfamiliarity import served_scores, threshold_at_share
    from model_training.unfamiliar_bench import evaluate_scores, fit_head, leave_one_kind_out

    stats, head_data = _head_inputs(outputs, f_train, data, args)
    dims = f_train.shape[1]
    t0 = time.process_time()
    choice = fit_head(head_data, dims, args.share)
    fit_cpu = time.process_time() - t0
    scored = {"combined": stats, "oe": stats.with_head(choice.head)}
    values = {n: {k: served_scores(*outputs[n], s) for k, s in scored.items()} for n in outputs if n != "train clean"}
    in_val = {k: np.concatenate([values[n][k] for n in ("val photos", "real_val photos")]) for k in scored}
    tests = {n: values[n] for n in ("test clean", "test photos", "real_test photos")}
    # the training run's unfamiliar_share_photos_test: the benchmark's and the real-surface slice's test photos
    tests["all test photos"] = {k: np.concatenate([values[n][k] for n in ("test photos", "real_test photos")])
                                for k in scored}  # fmt: skip
    (combined, oe) = evaluate_scores(in_val, tests, values["ood test"], data["ood"]["test"].kinds, args.share)
    print(f"\n  outlier exposure: head fitted on {len(head_data.fit_in)} in-distribution rows (photos of training "
          f"items + {args.fit_clean} clean) vs {len(head_data.fit_out)} unfamiliar training photos "
          f"({fit_cpu:.1f} CPU s for {len(choice.tried)} penalties); threshold flags {args.share:.0%} of "
          f"{len(in_val['oe'])} validation photos (benchmark + real-surface)")  # fmt: skip
    tried = ", ".join(f"{l2:g}: {c:.1%} {a:.3f}" for l2, (c, a) in choice.tried.items())
    print(f"    L2 penalty -> unfamiliar validation photos caught, AUROC: {tried}; chose {choice.head.l2:g}")
    print(f"    {'score':27s} {'threshold':>10s} " + "".join(f"{n:>18s}" for n in tests) + "   (share flagged)")
    for r in (combined, oe):
        print(f"    {r.score:27s} {r.threshold:10.3f} " + "".join(f"{r.flagged[n]:18.1%}" for n in tests))
    _print_report(f"unfamiliar test photos ({len(data['ood']['test'])})", (combined, oe), kinds)
    if args.no_loko:
        return
    loko = {}
    for kind, head in leave_one_kind_out(head_data, dims, args.share).items():
        s = stats.with_head(head)
        val_photos = [served_scores(*outputs[n], s) for n in ("val photos", "real_val photos")]
        t = threshold_at_share(np.concatenate(val_photos), args.share)
        ood_test = served_scores(*outputs["ood test"], s)
        loko[kind] = (float(np.mean(ood_test[data["ood"]["test"].kinds == kind] > t)),
                      float(np.mean(served_scores(*outputs["test photos"], s) > t)), head.l2)  # fmt: skip
    print(
        "    leave-one-kind-out: the head fitted and chosen without kind k, caught on kind k "
        "(and the share of test photos it flags, its penalty)"
    )
    print(f"    {'oe without the kind':27s}" + " " * 11 + "".join(f"{loko[k][0]:11.1%}" for k in kinds))
    print(f"    {'  test photos flagged':27s}" + " " * 11 + "".join(f"{loko[k][1]:11.1%}" for k in kinds))
    print(f"    {'  L2 chosen':27s}" + " " * 11 + "".join(f"{loko[k][2]:11g}" for k in kinds))


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
    p.add_argument(
        "--per-kind-train",
        type=int,
        default=150,
        help="unfamiliar training photos per kind, the outlier-exposure head's (150; 0: no head)",
    )
    p.add_argument(
        "--fit-per-class",
        type=int,
        default=50,
        help="training items per class photographed by each renderer, for the head (50)",
    )
    p.add_argument("--fit-clean", type=int, default=1000, help="clean training images the head is fitted on (1000)")
    p.add_argument("--no-loko", action="store_true", help="skip leave-one-kind-out (6 more head fits)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes (all cores)")
    args = p.parse_args(argv)
    if not 0 < args.share < 1 or min(args.per_kind_val, args.per_kind_test, args.workers) < 1:
        p.error("--share must be in (0, 1); --per-kind-* and --workers at least 1")
    if min(args.per_kind_train, args.fit_per_class, args.fit_clean) < 0:
        p.error("--per-kind-train, --fit-per-class and --fit-clean must not be negative")
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
    oe = args.per_kind_train > 0
    photos = _photo_sets(settings, (train, val, test), args.workers, args.fit_per_class if oe else 0)
    sizes = [("val", args.per_kind_val), ("test", args.per_kind_test), ("train", args.per_kind_train)][: 3 if oe else 2]
    ood = {
        split: render_unfamiliar_set(split, per_kind=n, seed=seed, cache_dir=Path(cache), workers=args.workers)
        for split, n in sizes
    }
    sets = [("val clean", val.images, val.labels), ("test clean", test.images, test.labels)]
    sets += [(name, s.images, s.labels) for name, s in photos.items()]
    sets += [(f"ood {split}", s.images, None) for split, s in ood.items()]
    for uri, model in models.items():
        data = {"train": train, "sets": sets, "ood": ood, "seed": seed}
        evaluate_model(uri, model, data, ood, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
