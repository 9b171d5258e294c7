"""The serving fast paths: the numpy runtime equals the TensorFlow graph, and micro-batching returns each caller
exactly its own rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from data_processing.preprocessing import to_model_batch
from model_serving.batching import MicroBatcher
from model_serving.predictor import KerasPredictor, ModelInfo, NumpyRuntime

INFO = ModelInfo("refund-item-classifier", "1", "champion", None, "test://")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_numpy_runtime_matches_tensorflow_on_the_usual_layers():
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(2.0, offset=-1.0),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 5, strides=2, padding="same"),
            keras.layers.Activation("tanh"),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(pool_size=2, strides=1, padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(12, activation="sigmoid"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # Non-trivial batch-norm statistics, so the folded scale/shift is really exercised.
    bn = model.layers[2]
    bn.set_weights([w + np.linspace(0.5, 1.5, w.shape[0]).astype(np.float32) for w in bn.get_weights()])
    predictor = KerasPredictor(model, INFO, numpy_max_batch=4)
    assert predictor.runtime is not None
    images = _images(4)
    fast = predictor.predict_proba(images)
    predictor.numpy_max_batch = 0
    graph = predictor.predict_proba(images)
    np.testing.assert_allclose(fast, graph, atol=1e-5)
    np.testing.assert_allclose(fast.sum(axis=1), 1.0, atol=1e-5)


def test_a_test_time_augmented_model_is_served_through_the_graph_with_its_views():
    from model_training.model import TTA_VIEWS, build_model, shift_images, with_tta

    network = build_model("cnn", seed=2)
    predictor = KerasPredictor(with_tta(network, "shift5"), INFO, numpy_max_batch=4)
    assert predictor.runtime is None and predictor.numpy_max_batch == 0  # numpy is slower for 5 views
    x = to_model_batch(_images(3))
    want = np.mean([network.predict(shift_images(x, *v), verbose=0) for v in TTA_VIEWS["shift5"]], axis=0)
    np.testing.assert_allclose(predictor.predict_proba(_images(3)), want, atol=1e-5)
    assert not np.allclose(network.predict(x, verbose=0), want, atol=1e-4)  # the views are really applied


def test_unsupported_layers_fall_back_to_the_graph():
    import keras

    inp = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.Add()([x, x])  # a merge: not a straight chain
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    assert NumpyRuntime.from_keras(model) is None
    predictor = KerasPredictor(model, INFO, numpy_max_batch=4)
    assert predictor.runtime is None
    assert predictor.predict_proba(_images(2)).shape == (2, 10)


def test_a_runtime_that_disagrees_with_the_graph_is_refused():
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    assert NumpyRuntime.from_keras(model, reference=lambda x: np.zeros((len(x), 10))) is None


def test_microbatcher_gives_every_caller_its_own_rows():
    calls: list[int] = []
    gate = threading.Event()

    def predict(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            gate.wait(timeout=30)  # hold the first pass so the others queue up behind it
        out = np.zeros((len(images), 10), dtype=np.float32)
        out[np.arange(len(images)), images[:, 0, 0] % 10] = images[:, 0, 1]  # row encodes the caller's input
        return out

    batcher = MicroBatcher(predict, max_batch=16)
    results: dict[int, np.ndarray] = {}

    def caller(i: int) -> None:
        imgs = np.zeros((1 + i % 3, 28, 28), dtype=np.uint8)
        imgs[:, 0, 0], imgs[:, 0, 1] = i, 100 + i
        results[i] = batcher(imgs)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(9)]
    threads[0].start()
    while not calls:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(batcher._queue) < 8:  # all eight are waiting behind the held pass
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(timeout=30)
    for i in range(9):
        assert results[i].shape == (1 + i % 3, 10)
        assert np.all(results[i][:, i % 10] == 100 + i)
    assert len(calls) < 9  # the queued callers shared passes
    assert sum(calls) == sum(1 + i % 3 for i in range(9))
    assert max(calls) <= 16


def test_microbatcher_passes_errors_to_every_waiter():
    def predict(images: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    batcher = MicroBatcher(predict)
    with pytest.raises(ValueError, match="exploded"):
        batcher(np.zeros((1, 28, 28), np.uint8))
    assert batcher._busy is False  # and the batcher is usable again
