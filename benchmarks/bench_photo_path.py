"""Benchmark: the photo path's framing rule against the previous one, on the same rendered photos and models.

Usage: python benchmarks/bench_photo_path.py [--tracking-uri URI] [--storage-uri URI] [--per-class N]
                                             [--workers N] [--previous RULE] [--current SEGMENTER]
                                             [--slice plain|real] MODEL [...]
       MODEL is an MLflow model URI (``models:/refund-item-classifier@champion``, ``models:/m-<id>``).

Renders ``--per-class`` validation items of each class as warehouse photos (the photo benchmark's renderer and
seeds, ``data_processing.photos``; default 500, i.e. all 5,000 validation items, five times the benchmark's own
validation photos, so differences of a few tenths of a point are visible), and brings every photo through THE
preprocessing twice: as it is (the item's box grown into the fainter parts connected to it,
``preprocessing._ITEM_GROW``, and cut at the item's edge, ``_BOX_MARGIN``) and with a previous rule, the
baseline of the same run: ``--previous margin`` (default) the same box with one low-resolution pixel of margin,
``--previous share`` that and no growth (the box of the parts above ``_ITEM_SHARE`` of the peak only); or another
resampling of the crop to 28x28 than Lanczos (``nearest``: Fashion-MNIST's own subsampling, ``box``, ``bicubic``), or
no unsharp mask (``unsharpened``); or another way of finding the item (``grey``: brightness only, the rule before
issue 27; ``colour``: the backdrop model in brightness, colour and texture, the hand-made rule; ``refined``: that and
a GrabCut-like refinement; ``learned``: the per-pixel network, ``data_processing.segmenter``, the default since issue
27's third round; ``--current`` picks the one the run is compared with, default the preprocessing's own), or the colour
path without the item's own white (``backdrop-white``), without the closer look at a small item (``unzoomed``), or
the hand-made rule without both (``whole-view``, the colour path of issue 27's first round). ``--slice real``
photographs the items on real surfaces, hand-held (``data_processing.real_photos``), instead of the plain renderer.
Prints each model's accuracy under both, the paired difference, per kind of photo (backdrop, item tone, shadow,
cut; on the real slice: surface and difficulty) the mean over the models, and the CPU milliseconds per photo of
``preprocess_bytes`` under both (median and mean, measured in the rendering processes, so the decoding is in
both), with the CPU model. Choosing on validation photos only: the test photos stay for reporting. No training:
it evaluates models that exist.

Exit codes: 0 success; 1 a model or the processed splits could not be loaded; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import add_model_arguments, cpu_model

from common.cli import read_settings
from common.hardware import describe as describe_cpu
from common.logging import setup_logging
from common.storage import storage_from_settings
from data_processing.dataset import load_split
from data_processing.preprocessing import SEGMENTERS

# "backdrop-white": the item's darkness against the backdrop only (no item white); "unzoomed": no closer look at a
# small item; "whole-view": neither (the colour path as issue 27's first round left it)
PREVIOUS_RULES = ("margin", "share", "nearest", "box", "bicubic", "unsharpened", *SEGMENTERS, "backdrop-white",
                  "unzoomed", "whole-view")  # fmt: skip


@contextlib.contextmanager
def previous_rule(which: str = "margin") -> Iterator[None]:
    """The preprocessing with one rule changed: a box rule before the current one, ``margin`` (one low-resolution
    pixel around the item's box, until the tight box) or ``share`` (that margin, and no growth: growing down to
    ``_ITEM_SHARE`` adds nothing to the parts above it); or the crop resampled to 28x28 by another filter
    (``nearest``, ``box``, ``bicubic``); or ``unsharpened`` (no unsharp mask after the resampling)."""
    from PIL import Image

    from data_processing import preprocessing

    names = ("_ITEM_GROW", "_BOX_MARGIN", "_RESAMPLE", "_SHARPEN_PERCENT", "_SEGMENTER", "_ITEM_WHITE", "_ZOOM_BELOW")
    kept = {name: getattr(preprocessing, name) for name in names}
    if which in ("margin", "share"):
        preprocessing._BOX_MARGIN = 1
    if which == "share":
        preprocessing._ITEM_GROW = preprocessing._ITEM_SHARE
    if which in ("nearest", "box", "bicubic"):
        preprocessing._RESAMPLE = Image.Resampling[which.upper()]
    if which == "unsharpened":
        preprocessing._SHARPEN_PERCENT = 0
    if which in SEGMENTERS:
        preprocessing._SEGMENTER = which
    if which in ("backdrop-white", "whole-view"):
        preprocessing._ITEM_WHITE = 0.0
    if which in ("unzoomed", "whole-view"):
        preprocessing._ZOOM_BELOW = 0.0
    if which == "whole-view":
        preprocessing._SEGMENTER = "colour"
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(preprocessing, name, value)


def _chunk(
    images: np.ndarray, seeds: list[tuple[int, int, int]], which: str, current: str | None, split: str
) -> list[tuple[np.ndarray, np.ndarray, list[str], float, float]]:
    """Render each item once; preprocess the photo with the current and the previous rule, timing both (CPU)."""
    from data_processing.preprocessing import preprocess_bytes
    from model_training.photo_bench import render

    out = []
    for image, seed in zip(images, seeds, strict=True):
        photo = render(image, seed, split)
        with previous_rule(current) if current else contextlib.nullcontext():
            t0 = time.process_time()
            now = preprocess_bytes(photo.data)
            t1 = time.process_time()
        with previous_rule(which):
            before = preprocess_bytes(photo.data)
            t2 = time.process_time()
        out.append((now, before, kinds(photo.params), t1 - t0, t2 - t1))
    return out


def kinds(params) -> list[str]:
    """The kinds of photo a photo is counted under (plain renderer: backdrop, tone, shadow, cut; real surfaces: the
    surface and each difficulty)."""
    if hasattr(params, "difficulties"):
        return [f"surface={params.surface}", *params.difficulties()]
    return [
        f"backdrop={params.texture or params.backdrop}",
        f"tone={params.item_tone}",
        f"shadow={'yes' if params.shadow > 0 else 'no'}",
        f"cut={'yes' if params.cut else 'no'}",
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--per-class", type=int, default=500, help="validation items per class to photograph (500)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes (all cores)")
    p.add_argument(
        "--previous",
        choices=PREVIOUS_RULES,
        default="margin",
        help="the baseline: 'margin' (one pixel of margin around the box), 'share' (also no growth), another "
        "resampling of the crop ('nearest', 'box', 'bicubic'), 'unsharpened', or another way of finding the item "
        "('grey', 'colour', 'refined', 'learned'), or the path without the item's own white ('backdrop-white'), "
        "without the closer look at a small item ('unzoomed') or the hand-made rule without both ('whole-view') "
        "(default: margin)",
    )
    p.add_argument(
        "--current",
        choices=SEGMENTERS,
        default=None,
        help="the way of finding the item compared with the baseline (default: the preprocessing's)",
    )
    p.add_argument(
        "--slice",
        choices=("plain", "real"),
        default="plain",
        help="photos of the plain renderer (default) or on real surfaces, hand-held",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    settings = read_settings("bench_photo_path.py")
    if settings is None:
        return 2
    p = build_parser()
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    if args.per_class < 1 or args.workers < 1:
        p.error("--per-class and --workers must be at least 1")
    setup_logging(False, settings.log_level)
    settings = settings.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)

    # TensorFlow and MLflow load only when there is work: --help stays fast, and the rendering processes (spawned,
    # so they import this module again) do not load TensorFlow.
    import mlflow.keras

    from model_training.config import TrainConfig
    from model_training.photo_bench import stratified_indices

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        val = load_split(storage_from_settings(settings), "val")
        models = {uri: mlflow.keras.load_model(uri) for uri in args.models}
    except Exception as exc:  # a benchmark reports what it could not load and stops
        print(f"could not load: {exc}")
        return 1
    seed = TrainConfig().photo_seed
    idx = stratified_indices(val.labels, args.per_class, seed)
    rows = photograph(args, val.images, idx, seed)
    report(args, rows, models, val.labels[idx], seed)
    return 0


def photograph(args: argparse.Namespace, images: np.ndarray, idx: np.ndarray, seed: int) -> list:
    """Photograph the items ``idx`` of ``images`` in ``args.workers`` processes and preprocess each photo both ways:
    one row per photo (current image, previous image, its kinds, seconds now, seconds before)."""
    import multiprocessing

    from model_training.photo_bench import photo_seed

    chunks = np.array_split(idx, max(1, 8 * args.workers))
    split = "real_val" if args.slice == "real" else "val"
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(
                _chunk, images[c], [photo_seed(seed, split, int(i)) for i in c], args.previous, args.current, split
            )
            for c in chunks
        ]
        return [row for job in jobs for row in job.result()]


def report(args: argparse.Namespace, rows: list, models: dict, labels: np.ndarray, seed: int) -> None:
    """The preprocessing's cost both ways, then each model's accuracy on both, overall and per kind of photo."""
    from model_training.report import predict_probs

    current = np.stack([r[0] for r in rows])
    previous = np.stack([r[1] for r in rows])
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        for k in r[2]:
            groups.setdefault(k, []).append(i)
    changed = float(np.mean(np.any(current != previous, axis=(1, 2))))
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f} (shared machine: compare within the run)")
    now_ms, before_ms = 1e3 * np.array([r[3] for r in rows]), 1e3 * np.array([r[4] for r in rows])
    print(
        f"preprocess_bytes per photo (CPU): current {args.current or 'default'} median {np.median(now_ms):.1f} / mean "
        f"{now_ms.mean():.1f} ms, previous {args.previous} (baseline) median {np.median(before_ms):.1f} / mean "
        f"{before_ms.mean():.1f} ms: x{now_ms.mean() / max(before_ms.mean(), 1e-9):.2f}"
    )
    print(f"{len(rows)} validation photos ({args.slice} slice, seed {seed}); {changed:.1%} of them differ")
    print(f"{'model':48s} {'previous (baseline)':>20s} {'current':>8s} {'difference':>11s}")
    right_prev, right_cur = [], []
    for uri, model in models.items():
        rp = predict_probs(model, previous).argmax(axis=1) == labels
        rc = predict_probs(model, current).argmax(axis=1) == labels
        right_prev.append(rp)
        right_cur.append(rc)
        print(f"{uri:48s} {rp.mean():20.2%} {rc.mean():8.2%} {100 * (rc.mean() - rp.mean()):+10.2f}p")
    print("per kind of photo, mean over the models: previous -> current (photos)")
    for k in sorted(groups):
        sel = np.asarray(groups[k])
        before = np.mean([r[sel].mean() for r in right_prev])
        after = np.mean([r[sel].mean() for r in right_cur])
        print(f"  {k:22s} {before:7.2%} -> {after:7.2%} ({len(sel)})")


if __name__ == "__main__":
    raise SystemExit(main())
