"""Helpers for the training and registry tests: tiny processed splits in a temporary store, a logged model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_tiny_images

from common.storage import LocalStorage
from data_processing.dataset import Split, save_split


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
    """Log an untrained tiny Keras model in a fresh run; returns its model URI (for registry tests)."""
    import mlflow

    from common.tracking import ensure_experiment
    from data_processing.preprocessing import to_model_batch
    from model_training.model import build_model
    from model_training.model_io import log_keras_model
    from model_training.train import pip_requirements

    model = build_model("tiny", seed=0)
    images, _ = make_tiny_images(2)
    exp_id = ensure_experiment("tests-registry", tracking_uri)
    with mlflow.start_run(experiment_id=exp_id):
        info = log_keras_model(model, to_model_batch(images), pip_requirements=pip_requirements())
    return info.model_uri
