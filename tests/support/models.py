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


def scored_cnn(images: np.ndarray, labels: np.ndarray, *, epochs: int = 3, seed: int = 0) -> tuple[Any, float, Any]:
    """A tiny CNN with the training recipe's head (``flatten`` features, ``logits``, softmax) fitted a little on
    ``images``, computing the unfamiliarity score as its 11th output (:func:`inference.unfamiliarity.
    with_unfamiliarity`, statistics of other generated items), the threshold that flags 5 % of held-out ones and the
    statistics: a served model as training builds it, small enough for tests."""
    from types import SimpleNamespace

    import keras

    from data_processing.preprocessing import to_model_batch
    from inference.unfamiliarity import threshold_at_share, with_unfamiliarity
    from model_training.unfamiliar_bench import fit_unfamiliarity

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten(name="flatten")(keras.layers.MaxPooling2D(4)(x))
    logits = keras.layers.Dense(10, name="logits")(x)
    network = keras.Model(inputs, keras.layers.Softmax()(logits))
    network.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    network.fit(to_model_batch(images), labels, epochs=epochs, batch_size=64, verbose=0)
    # The statistics want many more images than the features' dimensions (144): fitted on 256, new items of the
    # same kind all lay far away. Fitted on 2,048 more generated items, chosen on 512 others, as training does.
    fit_x, fit_y = make_tiny_images(2048, seed=seed + 101)
    held_out = make_tiny_images(512, seed=seed + 102)[0]
    stats = fit_unfamiliarity(network, SimpleNamespace(images=fit_x, labels=fit_y), [held_out])
    model = with_unfamiliarity(network, stats)
    scores = model.predict(to_model_batch(held_out), verbose=0)[:, 10]
    return model, threshold_at_share(scores, 0.05), stats


def log_model(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    tracking_uri: str,
    *,
    experiment: str = "tests-tiny-model",
    reference: bool = True,
    export: bool = True,
    unfamiliar_threshold: float | None = None,
) -> tuple[str, str]:
    """Log ``model`` in a new run like training does: its drift reference (first half of ``images``) and, unless
    ``export=False``, its exported runtime with the parity report (halves as validation and test). Returns
    (run id, model URI)."""
    import mlflow

    from common.tracking import ensure_experiment
    from data_processing.preprocessing import to_model_batch
    from inference.exporting import ExportPlan, export_and_log
    from inference.predictor import Predictor
    from inference.runtimes import KerasGraphRuntime
    from inference.versions import ModelInfo
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
            export_and_log(
                model, split, run.info.run_id, tracking_uri, plan=ExportPlan(unfamiliar_threshold=unfamiliar_threshold)
            )
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
    unfamiliar_threshold: float | None = None,
) -> Any:
    """:func:`log_model`, register the logged model as a new version of ``model_name`` (tagged with its
    ``unfamiliar_threshold``, as training does) and point ``alias`` at it. Returns the ModelVersion."""
    import mlflow
    from mlflow import MlflowClient

    from inference.versions import UNFAMILIAR_THRESHOLD_TAG

    mlflow.set_tracking_uri(tracking_uri)
    _, model_uri = log_model(model, images, labels, tracking_uri, export=export, experiment=experiment,
                             unfamiliar_threshold=unfamiliar_threshold)  # fmt: skip
    tags = {} if unfamiliar_threshold is None else {UNFAMILIAR_THRESHOLD_TAG: f"{unfamiliar_threshold:.6g}"}
    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(model_name, alias, mv.version)
    return mv


def register_tiny_model(
    tracking_uri: str,
    model_name: str = MODEL_NAME,
    alias: str = "champion",
    *,
    export: bool = True,
    unfamiliarity: bool = False,
) -> Any:
    """A tiny real CNN trained a few steps on 256 generated items, registered under ``alias``: for tests of
    serving, batch and drift that need a real registered model but not a good one. ``unfamiliarity``: one that
    computes the unfamiliarity score, with its threshold as a version tag (:func:`scored_cnn`); otherwise a model
    from before the score (10 outputs, no threshold)."""
    images, labels = make_tiny_images(256)
    threshold = None
    if unfamiliarity:
        model, threshold, _ = scored_cnn(images, labels)
    else:
        model = trained_cnn(images, labels)
    return register_model(tracking_uri, model, images, labels, model_name=model_name, alias=alias, export=export,
                          unfamiliar_threshold=threshold)  # fmt: skip


def unfamiliar_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` 28x28 uint8 images unlike :func:`make_tiny_images`' items: fine checkerboards of random phase and
    contrast (a texture with no item), which a model trained on those items calls unfamiliar."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        board = ((yy + xx + int(rng.integers(0, 2))) % 2).astype(np.float64)
        out[i] = np.clip(board * rng.uniform(150, 255) + rng.integers(0, 30, (28, 28)), 0, 255).astype(np.uint8)
    return out
