"""Per-item features the drift detector compares: pure functions on model images and softmax outputs.

Image statistics use pixel values in [0, 1] on the 28x28 model image (after preprocessing), so they see
what the model sees.
"""

from __future__ import annotations

import numpy as np

from common.labels import NUM_CLASSES

FOREGROUND_LEVEL = 0.1  # a pixel brighter than this (in [0, 1]) belongs to the item
DARK_LEVEL = 0.02  # a pixel at most this bright (5/255) is clean backdrop: sensor noise lifts it


def image_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 28, 28) uint8 or float in [0, 1] -> per-item mean intensity, contrast (std), foreground share,
    dark share (clean-backdrop pixels) and roughness (mean absolute difference of neighbouring pixels).

    The last two see what the camera did: noise lowers the dark share and raises roughness, blur lowers
    roughness, long before the model's outputs change much."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.ndim == 2:
        x = x[None]
    flat = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # explicit: -1 fails for an empty batch
    dx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)) if x.shape[2] > 1 else np.zeros(x.shape[0], np.float32)
    dy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) if x.shape[1] > 1 else np.zeros(x.shape[0], np.float32)
    return {
        "mean_intensity": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "foreground_share": (flat > FOREGROUND_LEVEL).mean(axis=1),
        "dark_share": (flat <= DARK_LEVEL).mean(axis=1),
        "roughness": (dx + dy) / 2,
    }


def prediction_features(probs: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 10) softmax -> confidence, entropy and each class's probability, per item."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    feats = {
        "confidence": p.max(axis=1),
        "entropy": -(p * np.log(p)).sum(axis=1),
    }
    for k in range(NUM_CLASSES):
        feats[f"p_class_{k}"] = p[:, k]
    return feats


UNFAMILIAR_FEATURE = "unfamiliar"  # 1.0 an item called unfamiliar, 0.0 not, NaN: its model has no score


def item_features(images: np.ndarray, probs: np.ndarray, unfamiliar: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All per-item features of a batch: what a drift window accumulates and a reference stores. ``unfamiliar``
    (per item, NaN where unknown) is carried for the window's share of unfamiliar items; it is not a drift test."""
    feats = prediction_features(probs)
    feats.update(image_features(images))
    feats["predicted_class"] = np.asarray(probs).argmax(axis=1).astype(np.int64)
    if unfamiliar is not None:
        feats[UNFAMILIAR_FEATURE] = np.asarray(unfamiliar, dtype=np.float64)
    return feats


def unfamiliar_share(window: dict[str, np.ndarray]) -> tuple[float | None, int]:
    """The share of unfamiliar items among a window's items whose model said (None: none did), and how many said."""
    values = np.asarray(window.get(UNFAMILIAR_FEATURE, ()), dtype=np.float64)
    known = values[np.isfinite(values)]
    return (float(known.mean()) if len(known) else None), len(known)
