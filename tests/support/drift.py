"""Synthetic per-item features for the drift tests: shaped like ``item_features`` output (including its
awkward parts: confidences saturated at exactly 1.0, a discrete foreground share), no model needed."""

from __future__ import annotations

import numpy as np

from common.labels import NUM_CLASSES
from monitoring.features import prediction_features


def synthetic_features(
    n: int,
    rng: np.random.Generator,
    *,
    class_probs: np.ndarray | None = None,
    brightness: float = 0.0,
    sharpness: float = 4.0,
) -> dict[str, np.ndarray]:
    """``n`` items: true class from ``class_probs``; logits peaked at it (``sharpness`` sets how often the
    float32 softmax saturates at 1.0); image statistics that depend on the class, shifted by ``brightness``."""
    p = np.full(NUM_CLASSES, 1 / NUM_CLASSES) if class_probs is None else np.asarray(class_probs, dtype=float)
    labels = rng.choice(NUM_CLASSES, size=n, p=p / p.sum())
    logits = rng.normal(0.0, 1.0, size=(n, NUM_CLASSES))
    logits[np.arange(n), labels] += rng.gamma(2.0, sharpness, size=n)
    logits = logits.astype(np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    feats = prediction_features(probs)
    feats["predicted_class"] = probs.argmax(axis=1).astype(np.int64)
    base = 0.2 + 0.02 * labels
    feats["mean_intensity"] = np.clip(base + brightness + rng.normal(0, 0.05, n), 0, 1).astype(np.float32)
    feats["contrast"] = np.clip(0.3 + 0.01 * labels + rng.normal(0, 0.04, n), 0, 1).astype(np.float32)
    feats["foreground_share"] = (rng.binomial(784, np.clip(0.45 + brightness + 0.01 * labels, 0, 1)) / 784).astype(
        np.float32
    )
    return feats
