"""THE inference class: one model version behind one runtime, used by the API, the batch job, drift evaluation,
training's evaluation and the benchmarks.

A :class:`Predictor` maps 28x28 uint8 model images (the output of
:func:`data_processing.preprocessing.preprocess_bytes`) to softmax probabilities and, for a version whose served
model computes it (:mod:`inference.unfamiliarity`: an 11th output column), how unfamiliar each image is
(:class:`Scores`), through :func:`data_processing.preprocessing.to_model_batch` and its runtime
(:mod:`inference.runtimes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common.labels import NUM_CLASSES
from data_processing.preprocessing import to_model_batch
from inference.runtimes import Runtime
from inference.versions import ModelInfo


@dataclass(frozen=True)
class Scores:
    """What the served model says of a batch: (N, 10) probabilities and (N,) unfamiliarity (higher = less like any
    of the 10 classes; NaN for a version whose model does not compute it)."""

    probs: np.ndarray
    unfamiliarity: np.ndarray

    @classmethod
    def of(cls, outputs: np.ndarray) -> Scores:
        """Split a served model's output: 10 probabilities, then the score when there is an 11th column."""
        out = np.asarray(outputs, dtype=np.float32)
        if out.ndim != 2 or out.shape[1] not in (NUM_CLASSES, NUM_CLASSES + 1):
            raise ValueError(f"expected model outputs of shape (N, 10) or (N, 11), got {out.shape}")
        probs = out[:, :NUM_CLASSES]
        if out.shape[1] > NUM_CLASSES:
            return cls(probs, out[:, NUM_CLASSES])
        return cls(probs, np.full(out.shape[0], np.nan, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.probs.shape[0])


def scores_of(predictor: PredictorLike, images: np.ndarray) -> Scores:
    """``predictor``'s :class:`Scores` of ``images``; a predictor with only ``predict_proba`` (a test's fake) scores no
    unfamiliarity."""
    predict = getattr(predictor, "predict", None)
    if callable(predict):
        return predict(images)
    return Scores.of(np.asarray(predictor.predict_proba(images)))


class PredictorLike(Protocol):
    """What the API and the batch job need of a predictor (tests inject small fakes with these attributes)."""

    info: ModelInfo

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32 softmax probabilities."""


@dataclass(frozen=True)
class Exported:
    """The export a runtime came from: its manifest (``runtime.json``: runtimes, parity reports, views) and the
    exported runtime that serves (None: the manifest's preferred one)."""

    manifest: dict[str, Any]
    kind: str | None = None


class Predictor:
    """A model version and the runtime that runs it; safe to call from many threads.

    ``fallback_reason`` says why a version is served through the Keras graph instead of its exported runtime;
    ``export`` is the export manifest (runtimes, parity reports) when the runtime came from one (``exported``),
    ``export_kind`` the exported runtime that serves; ``choice`` how the runtime was chosen (:mod:`inference.choice`).
    """

    def __init__(
        self,
        info: ModelInfo,
        runtime: Runtime,
        *,
        views: int = 1,
        fallback_reason: str | None = None,
        exported: Exported | None = None,
        max_batch: int = 1024,
        choice: dict[str, Any] | None = None,
    ) -> None:
        self.info = info
        self.runtime = runtime
        self.views = views
        self.fallback_reason = fallback_reason
        self.export = exported.manifest if exported is not None else {}
        self.max_batch = max_batch
        self.source = "registry"  # or "cache" when loaded from the local copy (registry unreachable)
        # How the runtime was chosen (inference.choice.RuntimeChoice.to_dict()), when it was
        self.choice = choice
        kind = exported.kind if exported is not None else None
        self.export_kind = kind or self.export.get("kind") or runtime.name
        self.unfamiliarity: bool | None = None  # whether the model computes the score; known from its first answer

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    def outputs(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """The served model's raw output for 28x28 uint8 images: (N, 10) probabilities, or (N, 11) with the
        unfamiliarity score."""
        return self.outputs_of_batch(to_model_batch(images))

    def outputs_of_batch(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`outputs` of model input (:func:`~data_processing.preprocessing.to_model_batch`'s (N, 28, 28, 1)
        float32), run in chunks of at most ``max_batch``."""
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, NUM_CLASSES + int(bool(self.unfamiliarity))), dtype=np.float32)
        if n <= self.max_batch:
            out = self.runtime.run(batch)
        else:
            out = np.concatenate([self.runtime.run(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)])
        if self.unfamiliarity is None:  # learnt from the first answer
            self.unfamiliarity = out.ndim == 2 and out.shape[1] > NUM_CLASSES
        return out

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> Scores:
        """Probabilities and unfamiliarity of 28x28 uint8 images (NaN unfamiliarity for a version without it)."""
        return Scores.of(self.outputs(images))

    def predict_batch(self, batch: np.ndarray) -> Scores:
        """:meth:`predict` of model input already made (:class:`inference.classifier.Classifier` makes it once)."""
        return Scores.of(self.outputs_of_batch(batch))

    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return self.predict(images).probs

    def warm_up(self) -> np.ndarray:
        """One prediction on a blank image: compiles or allocates what the runtime needs, proves it answers and
        learns whether the version computes the unfamiliarity score (:attr:`unfamiliarity`)."""
        out = self.outputs(np.zeros((1, 28, 28), dtype=np.uint8))
        if out.shape not in ((1, NUM_CLASSES), (1, NUM_CLASSES + 1)) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"warm-up prediction is malformed: shape {out.shape}")
        self.unfamiliarity = out.shape[1] > NUM_CLASSES
        return out[:, :NUM_CLASSES]

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
            "unfamiliarity": self.unfamiliarity,
        }
