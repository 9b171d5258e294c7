"""Helpers for the training and registry tests: tiny processed splits in a temporary store, a logged model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.storage import LocalStorage
from data_processing.dataset import Split, save_split
from tests.support.models import make_tiny_images


def write_tiny_splits(root: Path, n_train: int = 320, n_val: int = 100, n_test: int = 120) -> dict[str, Split]:
    """Generated 'items' saved as processed train/val/test splits in a LocalStorage at ``root``."""
    storage = LocalStorage(root)
    splits = {}
    for seed, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)), start=1):
        images, labels = make_tiny_images(n, seed=seed)
        keys = np.array([f"raw/{name}/{i:05d}.png" for i in range(n)])
        splits[name] = Split(images=images, labels=labels, keys=keys)
        save_split(storage, name, splits[name])
    return splits


def log_tiny_model(tracking_uri: str) -> str:
    """Log an untrained tiny Keras model (no reference, no export) in a fresh run; returns its model URI (for the
    registry tests, which only need something registrable)."""
    from model_training.network import build_model
    from tests.support.models import log_model

    images, labels = make_tiny_images(4)
    return log_model(
        build_model("tiny", seed=0),
        images,
        labels,
        tracking_uri,
        experiment="tests-registry",
        reference=False,
        export=False,
    )[1]
