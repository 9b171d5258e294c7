"""Generated 28x28 items and small real Keras models, logged and registered the way training does it: the one way
tests and benchmarks put a model into an MLflow store."""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_NAME = "refund-item-classifier"


def make_tiny_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` small generated 28x28 uint8 'items' (a bright blob whose shape depends on the label) and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        h = 6 + 2 * int(label)
        w = 24 - 2 * int(label)
        top, left = (28 - min(h, 26)) // 2, (28 - max(w, 4)) // 2
        images[i, top : top + min(h, 26), left : left + max(w, 4)] = 120 + 10 * int(label)
    noise = rng.integers(0, 20, size=images.shape, dtype=np.uint8)
    return np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


def trained_cnn(images: np.ndarray, labels: np.ndarray, *, size: str = "tiny", epochs: int = 3, seed: int = 0) -> Any:
    """A small real CNN fitted a little on ``images``: ``tiny`` (conv4, for tests) or ``stand-in`` (conv32-conv64-
    dense128, ~225k parameters: the usual Fashion-MNIST size, for benchmarks without a trained champion)."""
    import keras

    from data_processing.preprocessing import to_model_batch

    keras.utils.set_random_seed(seed)
    if size == "tiny":
        body = [keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(4), keras.layers.Flatten()]
    elif size == "stand-in":
        body = [
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
        ]
    else:
        raise ValueError(f"size must be tiny or stand-in, not {size!r}")
    model = keras.Sequential([keras.Input((28, 28, 1)), *body, keras.layers.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2 if size == "tiny" else 1e-3), loss="sparse_categorical_crossentropy"
    )
    model.fit(to_model_batch(images), labels, epochs=epochs, batch_size=64, verbose=0)
    return model


def log_model(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    tracking_uri: str,
    *,
    experiment: str = "tests-tiny-model",
    reference: bool = True,
    export: bool = True,
) -> tuple[str, str]:
    """Log ``model`` in a new run like training does: its drift reference (first half of ``images``) and, unless
    ``export=False``, its exported runtime with the parity report (halves as validation and test). Returns
    (run id, model URI)."""
    import mlflow

    from common.tracking import ensure_experiment
    from data_processing.preprocessing import to_model_batch
    from inference.export import export_and_log
    from inference.models import ModelInfo
    from inference.predictor import Predictor
    from inference.runtimes import KerasGraphRuntime
    from model_training.model_io import log_keras_model
    from monitoring.reference import build_reference, log_reference

    half = len(images) // 2
    with mlflow.start_run(experiment_id=ensure_experiment(experiment, tracking_uri)) as run:
        if reference:
            graph = Predictor(ModelInfo("logging", "0", None, None, "memory://"), KerasGraphRuntime(model))
            log_reference(build_reference(images[:half], graph.predict_proba(images[:half]), source="tests"))
        mlflow.log_metric("test_accuracy", 0.1)
        info = log_keras_model(model, to_model_batch(images[:2]))
        if export:
            split = {"val": (images[:half], labels[:half]), "test": (images[half:], labels[half:])}
            export_and_log(model, split, run.info.run_id, tracking_uri)
    return run.info.run_id, info.model_uri


def register_model(
    tracking_uri: str,
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    model_name: str = MODEL_NAME,
    alias: str = "champion",
    export: bool = True,
    experiment: str = "tests-tiny-model",
) -> Any:
    """:func:`log_model`, register the logged model as a new version of ``model_name`` and point ``alias`` at it.
    Returns the ModelVersion."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    _, model_uri = log_model(model, images, labels, tracking_uri, export=export, experiment=experiment)
    mv = mlflow.register_model(model_uri, model_name)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(model_name, alias, mv.version)
    return mv


def register_tiny_model(
    tracking_uri: str, model_name: str = MODEL_NAME, alias: str = "champion", *, export: bool = True
) -> Any:
    """A tiny real CNN trained a few steps on 256 generated items, registered under ``alias``: for tests of
    serving, batch and drift that need a real registered model but not a good one."""
    images, labels = make_tiny_images(256)
    model = trained_cnn(images, labels)
    return register_model(tracking_uri, model, images, labels, model_name=model_name, alias=alias, export=export)
