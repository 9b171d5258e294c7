"""Benchmark: does training on the renderer's own photos teach a network more than the in-graph photo augmentation?

Usage: python benchmarks/bench_photo_training.py [--tracking-uri URI] [--storage-uri URI] [--photos N]
                                                 [--epochs E] [--val-per-class K] [--workers N] MODEL [...]
       MODEL is an MLflow model URI (``models:/m-<id>``, ``models:/refund-item-classifier@champion``).

For each model, two copies are fine-tuned from its weights for ``--epochs`` epochs with the same seeded schedule
(AdamW, cosine from 3e-4 to 0, label smoothing 0.1, the default augmentation of ``model_training.data``: photo
effects in the graph on half of the images). The baseline trains on the training split; the other on the same
plus ``--photos`` training items rendered as warehouse photos and brought through THE preprocessing
(``model_training.photo_bench``, the photo seed's ``train`` stream, which no benchmark photo shares). Both are
scored on the clean validation split and on its items rendered as photos (``--val-per-class`` of each class,
default 500: all 5,000), and the benchmark prints before, baseline, with photos, the difference, and the class
furthest below its clean accuracy. Choosing on validation only: the test photos stay for reporting. Renders are
cached under ``DATA_DIR/cache/photo-bench`` like training's.

Exit codes: 0 success; 1 a model or the processed splits could not be loaded; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _common import add_model_arguments

from common.cli import read_settings
from common.hardware import describe as describe_cpu
from common.labels import CLASS_NAMES, NUM_CLASSES
from common.logging import setup_logging
from common.storage import storage_from_settings
from data_processing.dataset import load_split

FINE_TUNE_SEED = 7


def _scores(model, val, photos) -> tuple[float, float, str]:
    """Clean validation accuracy, photo accuracy, and the class furthest below its clean accuracy on the photos."""
    from model_training.report import predict_probs

    clean = predict_probs(model, val.images).argmax(axis=1) == val.labels
    photo = predict_probs(model, photos.images).argmax(axis=1) == photos.labels
    gaps = [clean[val.labels == k].mean() - photo[photos.labels == k].mean() for k in range(NUM_CLASSES)]
    worst = int(np.argmax(gaps))
    return float(clean.mean()), float(photo.mean()), f"{CLASS_NAMES[worst]} {100 * gaps[worst]:.1f}"


def _fine_tune(model, images: np.ndarray, labels: np.ndarray, epochs: int) -> None:
    import keras

    from model_training.config import TrainConfig
    from model_training.data import make_batches

    batches = make_batches(images, labels, TrainConfig(seed=FINE_TUNE_SEED), epochs=epochs)
    schedule = keras.optimizers.schedules.CosineDecay(3e-4, batches.steps_per_epoch * epochs)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.05),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),  # the served model outputs probabilities
    )
    model.fit(batches.dataset, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, verbose=0, shuffle=False)


def main(argv: list[str] | None = None) -> int:
    settings = read_settings("bench_photo_training.py")
    if settings is None:
        return 2
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--photos", type=int, default=10_000, help="training items rendered as photos (10000)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of each copy (3)")
    p.add_argument("--val-per-class", type=int, default=500, help="validation photos per class (500: all of them)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes (all cores)")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    if min(args.photos, args.epochs, args.val_per_class, args.workers) < 1:
        p.error("--photos, --epochs, --val-per-class and --workers must be at least 1")
    setup_logging(False, settings.log_level)
    settings = settings.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)

    # TensorFlow and MLflow load only when there is work: --help stays fast, and the rendering processes (spawned)
    # never load TensorFlow.
    import mlflow.keras

    from model_training.photo_bench import DEFAULT_SEED, cache_dir, start_rendering

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        storage = storage_from_settings(settings)
        train, val = load_split(storage, "train"), load_split(storage, "val")
        models = {uri: mlflow.keras.load_model(uri) for uri in args.models}
    except Exception as exc:  # a benchmark reports what it could not load and stops
        print(f"could not load: {exc}")
        return 1
    per_class = {"train": -(-args.photos // NUM_CLASSES), "val": args.val_per_class}
    pending, executor = start_rendering(
        [("train", train.images, train.labels), ("val", val.images, val.labels)],
        seed=DEFAULT_SEED,
        per_class=per_class,
        cache_dir=cache_dir(settings.data_dir),
        workers=args.workers,
    )
    try:
        rendered, val_photos = pending["train"].result(), pending["val"].result()
    finally:
        if executor is not None:
            executor.shutdown()
    ok = rendered.images.reshape(len(rendered), -1).any(axis=1)  # a photo the preprocessing refused is all zeros
    with_photos = (
        np.concatenate([train.images, rendered.images[ok]]),
        np.concatenate([train.labels, rendered.labels[ok]]),
    )
    print(
        f"{int(ok.sum())} training photos added to {len(train.labels)} training images; {len(val_photos)} validation "
        f"photos (seed {DEFAULT_SEED}); {args.epochs} fine-tuning epochs each"
    )
    print(f"{'model':48s} {'arm':22s} {'clean val':>9s} {'val photos':>10s}  worst photo class (points below clean)")
    for uri, baseline in models.items():
        before = _scores(baseline, val, val_photos)
        _fine_tune(baseline, train.images, train.labels, args.epochs)  # the loaded copy becomes the baseline arm
        base = _scores(baseline, val, val_photos)
        treated = mlflow.keras.load_model(uri)
        _fine_tune(treated, *with_photos, args.epochs)
        photos = _scores(treated, val, val_photos)
        for arm, (c, ph, worst) in (("before", before), ("baseline fine-tune", base), ("+ rendered photos", photos)):
            print(f"{uri:48s} {arm:22s} {c:9.2%} {ph:10.2%}  {worst}")
        print(f"{uri:48s} {'difference':22s} {100 * (photos[0] - base[0]):+8.2f}p {100 * (photos[1] - base[1]):+9.2f}p")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
