"""THE inference class: one model version behind one runtime, used by the API, the batch job, drift evaluation,
training's evaluation and the benchmarks.

A :class:`Predictor` maps 28x28 uint8 model images (the output of
:func:`data_processing.preprocessing.preprocess_bytes`) to softmax probabilities, through
:func:`data_processing.preprocessing.to_model_batch` and its runtime (:mod:`inference.runtimes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from common.labels import NUM_CLASSES
from data_processing.preprocessing import to_model_batch
from inference.models import ModelInfo
from inference.runtimes import Runtime


class PredictorLike(Protocol):
    """What the API and the batch job need of a predictor (tests inject small fakes with these attributes)."""

    info: ModelInfo

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32 softmax probabilities."""


class Predictor:
    """A model version and the runtime that runs it; safe to call from many threads.

    ``fallback_reason`` says why a version is served through the Keras graph instead of its exported runtime;
    ``export`` is the export manifest (runtimes, parity reports) when the runtime came from one, ``export_kind`` the
    exported runtime that serves; ``choice`` how the runtime was chosen (:mod:`inference.choice`).
    """

    def __init__(
        self,
        info: ModelInfo,
        runtime: Runtime,
        *,
        views: int = 1,
        fallback_reason: str | None = None,
        export: dict[str, Any] | None = None,
        max_batch: int = 1024,
        source: str = "registry",
        choice: dict[str, Any] | None = None,
        export_kind: str | None = None,
    ) -> None:
        self.info = info
        self.runtime = runtime
        self.views = views
        self.fallback_reason = fallback_reason
        self.export = export or {}
        self.max_batch = max_batch
        self.source = source  # "registry", or "cache" when loaded from the local copy (registry unreachable)
        # How the runtime was chosen (inference.choice.RuntimeChoice.to_dict()), when it was
        self.choice = choice
        self.export_kind = export_kind or (self.export.get("kind") if self.export else None) or runtime.name

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        batch = to_model_batch(images)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        if n <= self.max_batch:
            return self.runtime.run(batch)
        return np.concatenate([self.runtime.run(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)])

    def warm_up(self) -> np.ndarray:
        """One prediction on a blank image: compiles or allocates what the runtime needs and proves it answers."""
        out = self.predict_proba(np.zeros((1, 28, 28), dtype=np.uint8))
        if out.shape != (1, NUM_CLASSES) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"warm-up prediction is malformed: shape {out.shape}")
        return out

    def describe_runtime(self) -> dict[str, Any]:
        """What ``/health``, ``/metrics`` and each night's MLflow run say about how this version is served."""
        parity = self.export.get("parity") or {}
        return {
            "runtime": self.runtime_name,
            "views": self.views,
            "fallback_reason": self.fallback_reason,
            "parity_argmax_agreement": parity.get("argmax_agreement"),
            "source": self.source,
            "runtime_choice": self.choice,
        }
