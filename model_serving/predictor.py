"""The one fast inference path, shared by the API and the nightly batch job.

A :class:`Predictor` maps a batch of 28x28 uint8 model images (from
:func:`data_processing.preprocessing.preprocess_bytes`) to softmax probabilities. The real one,
:class:`KerasPredictor`, loads a registered model from MLflow and calls it through a compiled
``tf.function`` (~0.5-1 ms a call) instead of ``model.predict`` (~40 ms a call).

For small batches (the API's single-image requests) even the compiled call is mostly dispatch overhead, so
:class:`NumpyRuntime` re-expresses the usual image-classifier layers (Conv2D, pooling, Dense, BatchNorm, ...)
as a few numpy matrix products on the exported weights (~0.1 ms for one image). It is only used when every
layer is supported AND its outputs match the TensorFlow graph on a probe batch; otherwise the tf.function
path serves. Tests inject a small fake with the same attributes.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common.labels import CLASS_NAMES
from data_processing.preprocessing import to_model_batch

log = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str | None
    run_id: str | None
    uri: str


class Predictor(Protocol):
    info: ModelInfo

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32 softmax probabilities."""


def resolve_model(model_uri: str, tracking_uri: str | None = None) -> ModelInfo:
    """Turn ``models:/name@alias`` or ``models:/name/version`` into the concrete version it names now."""
    m = _MODELS_URI.match(model_uri)
    if not m:
        return ModelInfo(name=model_uri, version="unregistered", alias=None, run_id=None, uri=model_uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    name, alias = m["name"], m["alias"]
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, m["version"])
    return ModelInfo(name=name, version=str(mv.version), alias=alias, run_id=mv.run_id, uri=model_uri)


class KerasPredictor:
    """A Keras model behind a compiled ``tf.function``; safe to call from many threads."""

    def __init__(self, model: Any, info: ModelInfo, *, numpy_max_batch: int = 0) -> None:
        """``numpy_max_batch`` > 0 serves batches up to that size through a verified :class:`NumpyRuntime`
        (when the model allows it); larger batches always go through the compiled TensorFlow graph."""
        import tensorflow as tf

        self.model = model
        self.info = info
        self._fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32)],
            reduce_retracing=True,
        )
        self._lock = threading.Lock()
        self.numpy_max_batch = 0
        self.runtime: NumpyRuntime | None = None
        if numpy_max_batch > 0:
            self.runtime = NumpyRuntime.from_keras(model, reference=lambda x: np.asarray(self._fn(x)))
            if self.runtime is not None:
                self.numpy_max_batch = numpy_max_batch

    @classmethod
    def from_registry(
        cls, model_uri: str, tracking_uri: str | None = None, *, info: ModelInfo | None = None, numpy_max_batch: int = 0
    ) -> KerasPredictor:
        """Load the concrete version ``model_uri`` names (pinned, so an alias move mid-load cannot mix).

        ``info`` (from an earlier :func:`resolve_model`) skips the second registry lookup."""
        import mlflow
        import mlflow.keras

        info = info or resolve_model(model_uri, tracking_uri)
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        pinned = f"models:/{info.name}/{info.version}" if info.run_id else model_uri
        model = mlflow.keras.load_model(pinned)
        return cls(model, info, numpy_max_batch=numpy_max_batch)

    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        batch = to_model_batch(images)
        if batch.shape[0] == 0:
            return np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
        if self.runtime is not None and batch.shape[0] <= self.numpy_max_batch:
            return self.runtime(batch)
        return np.asarray(self._fn(batch), dtype=np.float32)

    def warm_up(self) -> np.ndarray:
        """One prediction on a blank image: compiles the graph and proves the model answers."""
        out = self.predict_proba(np.zeros((1, 28, 28), dtype=np.uint8))
        if out.shape != (1, len(CLASS_NAMES)) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"warm-up prediction is malformed: shape {out.shape}")
        return out


def describe(probs: np.ndarray, *, review_threshold: float, top_k: int = 3) -> list[dict[str, Any]]:
    """Softmax rows -> the JSON-ready prediction records the API and the batch job both emit."""
    out: list[dict[str, Any]] = []
    for row in np.asarray(probs, dtype=np.float64):
        order = np.argsort(-row, kind="stable")[:top_k]
        best = int(order[0])
        conf = float(row[best])
        out.append(
            {
                "class_id": best,
                "class_name": CLASS_NAMES[best],
                "confidence": round(conf, 6),
                "top3": [
                    {
                        "class_id": int(k),
                        "class_name": CLASS_NAMES[int(k)],
                        "confidence": round(float(row[k]), 6),
                    }
                    for k in order
                ],
                "needs_review": conf < review_threshold,
            }
        )
    return out


def configure_tensorflow_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Cap TensorFlow's thread pools (call before the first op). A server with one worker process per core
    wants 1 and 1: more threads per process only fight over the same cores."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError as exc:  # TensorFlow already initialised in this process: keep its pools
        log.warning("could not set TensorFlow thread pools: %s", exc)


# --------------------------------------------------------------------------------------------------------------
# NumpyRuntime: the exported weights of a plain feed-forward Keras image classifier, run with numpy.

_ACTIVATIONS: dict[str, Any] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_ACTIVATIONS["softmax"] = _softmax


def _activation(obj: Any) -> Any:
    name = obj if isinstance(obj, str) else getattr(obj, "__name__", None)
    if name not in _ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r}")
    return _ACTIVATIONS[name]


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, padding: str, fill: float) -> np.ndarray:
    """(N, H, W, C) -> strided view (N, OH, OW, C, kh, kw) of the kernel windows."""
    if padding == "same":
        (pt, pb), (pl, pr) = _same_pads(x.shape[1], kh, sh), _same_pads(x.shape[2], kw, sw)
        if pt or pb or pl or pr:
            x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return win[:, ::sh, ::sw]


class NumpyRuntime:
    """A feed-forward Keras model as a list of numpy steps on its exported weights (float32, no TensorFlow)."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        for step in self.steps:
            x = step(x)
        return np.asarray(x, dtype=np.float32)

    @classmethod
    def from_keras(cls, model: Any, *, reference: Any = None, atol: float = 1e-4) -> NumpyRuntime | None:
        """Export ``model``; None when a layer is not supported or (with ``reference``, a function computing
        the real model's output) the numpy outputs differ from it on a probe batch."""
        from model_training.model import tta_of

        if len(tta_of(model)[1]) > 1:
            # Measured with one thread per worker (the API's setting), 5-view champion: numpy 7.6 ms vs graph
            # 5.5 ms per image, so a test-time-augmented model is always served through the graph.
            log.info("test-time-augmented model: serving single images through the TensorFlow graph")
            return None
        try:
            runtime = cls([_step(layer) for layer in _flat_layers(model)])
        except NotImplementedError as exc:
            log.info("numpy fast path unavailable (%s); serving through the TensorFlow graph", exc)
            return None
        if reference is not None:
            rng = np.random.default_rng(0)
            probe = rng.random((8, 28, 28, 1), dtype=np.float32)
            probe[:2] = 0.0
            try:
                got, want = runtime(probe), np.asarray(reference(probe), dtype=np.float32)
            except Exception as exc:  # shape mismatch etc.: an unsupported wiring we did not detect
                log.warning("numpy fast path failed on the probe batch (%s); using the TensorFlow graph", exc)
                return None
            if got.shape != want.shape or not np.allclose(got, want, atol=atol, rtol=1e-3):
                log.warning("numpy fast path disagrees with the TensorFlow graph; using the TensorFlow graph")
                return None
        return runtime


def _flat_layers(model: Any) -> list[Any]:
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Sequential", "Functional"):
            layers.extend(_flat_layers(layer))
        else:
            layers.append(layer)
    # A layer that joins branches (Add, Concatenate, ...) is unsupported, so what remains is a straight chain.
    return layers


def _step(layer: Any) -> Any:
    kind = layer.__class__.__name__
    cfg = layer.get_config()
    if kind in (
        "InputLayer",
        "Dropout",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "ActivityRegularization",
    ):
        return lambda x: x
    if kind == "Rescaling":
        scale, offset = np.float32(cfg["scale"]), np.float32(cfg["offset"])
        return lambda x: x * scale + offset
    if kind == "Activation":
        return _activation(cfg["activation"])
    if kind == "ReLU" and not cfg.get("max_value") and not cfg.get("negative_slope") and not cfg.get("threshold"):
        return _ACTIVATIONS["relu"]
    if kind == "Softmax" and cfg.get("axis", -1) in (-1, [-1]):
        return _softmax
    if kind == "Flatten":
        return lambda x: x.reshape(x.shape[0], -1)
    if kind == "Dense":
        w = [np.asarray(v, dtype=np.float32) for v in layer.get_weights()]
        kernel, bias, act = w[0], (w[1] if cfg.get("use_bias", True) else None), _activation(cfg["activation"])

        def dense(x: np.ndarray) -> np.ndarray:
            y = x @ kernel
            if bias is not None:
                y += bias
            return act(y)

        return dense
    if kind == "Conv2D":
        if cfg.get("data_format", "channels_last") != "channels_last" or tuple(cfg.get("dilation_rate", (1, 1))) != (
            1,
            1,
        ):
            raise NotImplementedError("Conv2D with channels_first or dilation")
        if cfg.get("groups", 1) != 1:
            raise NotImplementedError("grouped Conv2D")
        w = [np.asarray(v, dtype=np.float32) for v in layer.get_weights()]
        kh, kw, cin, cout = w[0].shape
        kernel = np.ascontiguousarray(w[0].transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout))
        bias = w[1] if cfg.get("use_bias", True) else None
        (sh, sw), padding, act = tuple(cfg["strides"]), cfg["padding"], _activation(cfg["activation"])

        def conv(x: np.ndarray) -> np.ndarray:
            win = _windows(x, kh, kw, sh, sw, padding, 0.0)
            n, oh, ow = win.shape[:3]
            y = win.reshape(n * oh * ow, cin * kh * kw) @ kernel
            if bias is not None:
                y += bias
            return act(y).reshape(n, oh, ow, cout)

        return conv
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise NotImplementedError("channels_first pooling")
        ph, pw = tuple(cfg["pool_size"])
        sh, sw = tuple(cfg["strides"] or cfg["pool_size"])
        padding, is_max = cfg["padding"], kind == "MaxPooling2D"
        if not is_max and padding == "same":
            raise NotImplementedError("AveragePooling2D with same padding")

        def pool(x: np.ndarray) -> np.ndarray:
            n, h, w_, c = x.shape
            if padding == "valid" and (sh, sw) == (ph, pw):  # the common case: a cheap reshape
                oh, ow = h // ph, w_ // pw
                blocks = x[:, : oh * ph, : ow * pw].reshape(n, oh, ph, ow, pw, c)
                return blocks.max(axis=(2, 4)) if is_max else blocks.mean(axis=(2, 4))
            win = _windows(x, ph, pw, sh, sw, padding, -np.inf)
            return win.max(axis=(4, 5)) if is_max else win.mean(axis=(4, 5))

        return pool
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        if cfg.get("keepdims") or cfg.get("data_format", "channels_last") != "channels_last":
            raise NotImplementedError(f"{kind} with keepdims/channels_first")
        return (lambda x: x.mean(axis=(1, 2))) if kind == "GlobalAveragePooling2D" else (lambda x: x.max(axis=(1, 2)))
    if kind == "BatchNormalization":
        if cfg.get("axis", -1) not in (-1, [-1], 3, [3]):
            raise NotImplementedError("BatchNormalization on a non-channel axis")
        weights = {v.path.split("/")[-1]: np.asarray(v, dtype=np.float32) for v in layer.weights}
        gamma = weights.get("gamma", np.float32(1.0))
        beta = weights.get("beta", np.float32(0.0))
        scale = (gamma / np.sqrt(weights["moving_variance"] + np.float32(cfg["epsilon"]))).astype(np.float32)
        shift = (beta - weights["moving_mean"] * scale).astype(np.float32)
        return lambda x: x * scale + shift
    raise NotImplementedError(f"layer {kind}")
