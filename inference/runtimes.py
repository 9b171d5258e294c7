"""Runtimes that run a served model: (N, 28, 28, 1) float32 in [0, 1] -> its outputs, (N, 10) float32 softmax or,
for a model that computes how unfamiliar each image is (:mod:`inference.unfamiliarity`), (N, 11) with that score
last (:class:`inference.predictor.Scores` splits them).

* :class:`LiteRTRuntime` (LiteRT, ``ai-edge-litert``): the fastest here for this network family, in float32 or with
  dynamic-range int8 weights; no TensorFlow import needed to serve.
* :class:`OnnxRuntime` (ONNX Runtime): float32, the second choice.
* :class:`KerasGraphRuntime`: the Keras model behind a compiled ``tf.function`` (~0.2-3 ms a call, where
  ``model.predict`` costs ~40 ms whatever the batch): what every version can fall back to.

``benchmarks/bench_runtimes.py`` measures all three on the same model and split. Every runtime is safe to call from
several threads at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import numpy as np

from common.logging import native_notices_dropped

log = logging.getLogger(__name__)


class Runtime(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 28, 28, 1) float32 -> (N, 10) float32 probabilities, or (N, 11) with the unfamiliarity score."""


class KerasGraphRuntime:
    """A Keras model called through one compiled graph with a dynamic batch dimension."""

    name = "keras-graph"

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.model = model
        self._fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32)],
            reduce_retracing=True,
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(batch), dtype=np.float32)


class OnnxRuntime:
    """An ONNX model in an ONNX Runtime session (its ``run`` is thread-safe)."""

    name = "onnxruntime"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: batch})[0], dtype=np.float32)


class LiteRTRuntime:
    """A LiteRT (TFLite) flatbuffer. An interpreter is neither thread-safe nor cheap to resize, so each thread
    keeps one interpreter per padded batch size (1, 2, 4, ... ``chunk``); larger batches run in chunks."""

    def __init__(self, model: bytes, *, threads: int = 1, chunk: int = 256, name: str = "litert") -> None:
        self.model = model
        self.threads = max(1, threads)
        self.chunk = chunk
        self.name = name
        self._local = threading.local()
        self.run(np.zeros((1, 28, 28, 1), np.float32))  # fails here, not on the first request, if it cannot run

    def _interpreter(self, size: int) -> tuple[Any, int, int]:
        cache: dict[int, tuple[Any, int, int]] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        entry = cache.get(size)
        if entry is None:
            from ai_edge_litert.interpreter import Interpreter

            with native_notices_dropped():  # LiteRT announces its XNNPACK delegate on stderr, once per process
                it = Interpreter(model_content=self.model, num_threads=self.threads)
                inp = it.get_input_details()[0]["index"]
                if int(it.get_input_details()[0]["shape"][0]) != size:
                    it.resize_tensor_input(inp, [size, 28, 28, 1], strict=False)
                it.allocate_tensors()
            entry = cache[size] = (it, inp, it.get_output_details()[0]["index"])
        return entry

    def _run_padded(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        size = 1 << (n - 1).bit_length()  # next power of two: few interpreters, at most 2x padding
        if size != n:
            padded = np.zeros((size, *batch.shape[1:]), np.float32)
            padded[:n] = batch
            batch = padded
        it, inp, out = self._interpreter(size)
        it.set_tensor(inp, np.ascontiguousarray(batch, dtype=np.float32))
        it.invoke()
        return it.get_tensor(out)[:n].copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n <= self.chunk:
            return self._run_padded(batch)
        return np.concatenate([self._run_padded(batch[i : i + self.chunk]) for i in range(0, n, self.chunk)])


def configure_tensorflow_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Cap TensorFlow's thread pools (call before the first op). A server with one worker process per core wants 1
    and 1: more threads per process only fight over the same cores."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError as exc:  # TensorFlow already initialised in this process: keep its pools
        log.warning("could not set TensorFlow thread pools: %s", exc)
