"""Fitting the photo path's item finder (:mod:`data_processing.segmenter`) on composites with known silhouettes.

Usage: ``pixels = training_pixels(images, labels, real_per_class=200, plain_per_class=100)``,
``layers = fit(pixels)``, ``weights_module(layers, provenance)`` -> the text of
``data_processing/segmenter_weights.py`` (what ``python model_training/fit_segmenter.py`` writes).

Training items only, photographed by both renderers with the seed tags of the training photos
(:data:`model_training.photo_bench.SPLIT_TAGS` ``train`` / ``real_train``): the validation and test photos the
benchmark reports on are never seen. Each photo gives its pixels on the photo path's low-resolution copy, with the
item's true coverage there as the target, and (an item under half the frame) the pixels of the closer look the path
takes around it, so the network knows both scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_processing import preprocessing, segmenter
from data_processing.photos import item_coverage
from model_training.photo_bench import is_real, photo_seed, render, stratified_indices

PIXELS_PER_VIEW = 3000  # pixels drawn from each view of a photo (its whole view, its closer look)
HIDDEN = 16  # units in each of the two hidden layers


@dataclass(frozen=True)
class Pixels:
    """Per-pixel features (n, k) and whether each pixel is the item (n,), with how many photos gave them."""

    features: np.ndarray
    is_item: np.ndarray
    photos: int

    @property
    def item_share(self) -> float:
        return float(self.is_item.mean()) if len(self.is_item) else 0.0


def low_res_inputs(gray: np.ndarray, colour: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the network sees a photo through: the path's low-resolution copy, its backdrop and its colour."""
    small, _, surface, rgb = preprocessing.low_res_view(gray, colour)
    return small, surface, rgb


def view_pixels(
    gray: np.ndarray, colour: np.ndarray | None, coverage: np.ndarray, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random pixels of one view: their features and whether the item covers more than half of each."""
    small, surface, rgb = low_res_inputs(gray, colour)
    feats = segmenter.pixel_features(small, surface, rgb)
    target = Image.fromarray(coverage.astype(np.float32), mode="F").resize(small.shape[::-1], Image.Resampling.BOX)
    x, y = feats.reshape(len(feats), -1).T, np.asarray(target).ravel() > 0.5
    pick = rng.choice(len(y), min(n, len(y)), replace=False)
    return x[pick], y[pick]


def decoded_pixels(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo's grey and colour pixels as the photo path decodes them (EXIF orientation applied)."""
    img, _ = preprocessing.open_image(data, max_pixels=preprocessing.MAX_PIXELS, budget=preprocessing.DecodeBudget())
    pixels = preprocessing.to_pixels(preprocessing.finish_decoding(img))
    if pixels.ndim == 3:
        return np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint8), pixels
    return pixels, None


def photo_pixels(image: np.ndarray, seed: Sequence[int], split: str) -> tuple[np.ndarray, np.ndarray]:
    """One training item photographed for ``split`` (``train`` or ``real_train``): the pixels of its whole view and,
    when the item spans under half the frame (the path's closer look), of a crop around it."""
    photo = render(image, seed, split)
    gray, colour = decoded_pixels(photo.data)
    height, width = gray.shape
    scene = item_coverage(image, photo.params)
    coverage = np.asarray(
        Image.fromarray(scene.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )
    rng = np.random.default_rng([*seed, 7])
    crops = [(slice(None), slice(None))]
    rows, cols = np.nonzero(coverage > 0.3)
    if len(rows):
        box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        closer = preprocessing._zoomed(box, gray.shape)
        if closer is not None:
            crops.append((slice(closer[0], closer[1]), slice(closer[2], closer[3])))
    views = []
    versions = [(gray, colour)]
    if is_real(split):
        # Each real-surface view also as its negative: those surfaces are all mid-bright, so without it a light
        # garment on a dark surface (a black table, a dark belt) was something the network never saw, and it took
        # the surface for the item. (Plain photos' negatives cost 3 points on the plain validation photos.)
        versions.append((255 - gray, None if colour is None else 255 - colour))
    for g, col in versions:
        for r, c in crops:
            views.append(view_pixels(g[r, c], None if col is None else col[r, c], coverage[r, c], rng, PIXELS_PER_VIEW))
    return np.concatenate([v[0] for v in views]), np.concatenate([v[1] for v in views])


def _chunk(args: tuple[np.ndarray, list[tuple[int, int, int]], str]) -> list[tuple[np.ndarray, np.ndarray]]:
    images, seeds, split = args
    return [photo_pixels(image, seed, split) for image, seed in zip(images, seeds, strict=True)]


def training_pixels(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    real_per_class: int,
    plain_per_class: int,
    seed: int = 2026,
    workers: int = 1,
) -> Pixels:
    """Pixels of training items photographed on real surfaces (``real_per_class`` items per class) and on plain
    backdrops (``plain_per_class``), in ``workers`` processes; the same for any number of workers."""
    jobs: list[tuple[np.ndarray, list[tuple[int, int, int]], str]] = []
    for split, per_class in (("real_train", real_per_class), ("train", plain_per_class)):
        if per_class <= 0:
            continue
        idx = stratified_indices(labels, per_class, seed)
        for part in np.array_split(idx, max(1, math.ceil(len(idx) / 25))):
            jobs.append((images[part], [photo_seed(seed, split, int(i)) for i in part], split))
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_chunk, jobs))
    else:
        done = [_chunk(job) for job in jobs]
    per_photo = [p for chunk in done for p in chunk]
    k = segmenter.n_features()
    x = np.concatenate([p[0] for p in per_photo]) if per_photo else np.zeros((0, k), np.float32)
    y = np.concatenate([p[1] for p in per_photo]) if per_photo else np.zeros(0, bool)
    return Pixels(x.astype(np.float32), y, photos=len(per_photo))


def fit(
    pixels: Pixels, *, epochs: int = 4, seed: int = 0, hidden: int = HIDDEN
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """The network (two ReLU layers of ``hidden`` units, one logit), fitted by Adam on the pixels' cross-entropy;
    its layers as (weights, bias) pairs and its pixel accuracy and loss on a held-out 5 %."""
    import keras

    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(pixels.is_item))
    x, y = pixels.features[order], pixels.is_item[order].astype(np.float32)
    held = max(1, len(y) // 20)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    model.fit(x[held:], y[held:], batch_size=4096, epochs=epochs, verbose=0)
    loss, accuracy = model.evaluate(x[:held], y[:held], batch_size=4096, verbose=0)
    weights = model.get_weights()
    layers = [(np.asarray(weights[i]), np.asarray(weights[i + 1])) for i in range(0, len(weights), 2)]
    return layers, {"held_out_pixel_accuracy": float(accuracy), "held_out_loss": float(loss)}


def _literal(arr: np.ndarray) -> str:
    if arr.ndim == 1:
        return "(" + ", ".join(f"{float(v):.6g}" for v in arr) + ",)"
    rows = ",\n        ".join(_literal(row) for row in arr)
    return "(\n        " + rows + ",\n    )"


def weights_module(layers: list[tuple[np.ndarray, np.ndarray]], provenance: str) -> str:
    """The Python text of ``data_processing/segmenter_weights.py``: ``LAYERS``, (weights, bias) per layer, as
    literals (a reviewable diff; no binary file in the repository)."""
    body = ",\n".join(f"    (\n    {_literal(w)},\n    {_literal(b)},\n    )" for w, b in layers)
    return (
        "# ruff: noqa: E501\n"
        '"""The learned item finder\'s weights (data_processing.segmenter). Generated: do not edit.\n\n'
        + provenance.strip()
        + '\n"""\n\n# fmt: off\nLAYERS = (\n'
        + body
        + ",\n)\n"
    )
