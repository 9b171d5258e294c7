"""A hand-written stand-in for :class:`inference.predictor.Predictor`: a fixed, readable rule instead of a model."""

from __future__ import annotations

import numpy as np

from common.labels import NUM_CLASSES
from inference.versions import ModelInfo


class FakePredictor:
    """``rule="brightest"`` (the API tests): class = brightest pixel // 26, confidence 0.9 when the item is bright
    (max > 200), else 0.5. ``rule="mean"`` (the dashboard): class follows the mean brightness, and dark images get a
    flat, uncertain distribution so ``needs_review`` shows up too. ``calls`` counts forward passes."""

    def __init__(
        self,
        version: str = "7",
        *,
        rule: str = "brightest",
        run_id: str | None = None,
        review_threshold: float | None = None,
    ) -> None:
        if rule not in ("brightest", "mean"):
            raise ValueError(f"rule must be brightest or mean, not {rule!r}")
        self.info = ModelInfo(
            name="refund-item-classifier",
            version=version,
            alias="champion",
            run_id=run_id,
            uri="fake://",
            review_threshold=review_threshold,
        )
        self.rule = rule
        self.calls = 0

    def warm_up(self) -> np.ndarray:
        """One prediction on a blank image, as :meth:`inference.predictor.Predictor.warm_up` makes (it counts in
        ``calls``); a malformed answer is refused the same way."""
        out = self.predict_proba(np.zeros((1, 28, 28), dtype=np.uint8))
        if out.shape != (1, NUM_CLASSES) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"warm-up prediction is malformed: shape {out.shape}")
        return out

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        images = np.asarray(images)
        rows = [self._brightest(img) if self.rule == "brightest" else self._mean(img) for img in images]
        return np.asarray(rows, dtype=np.float32).reshape(len(images), NUM_CLASSES)

    @staticmethod
    def _brightest(img: np.ndarray) -> np.ndarray:
        top = int(img.max())
        conf = 0.9 if top > 200 else 0.5
        row = np.full(NUM_CLASSES, (1.0 - conf) / (NUM_CLASSES - 1), dtype=np.float32)
        row[min(top // 26, NUM_CLASSES - 1)] = conf
        return row

    @staticmethod
    def _mean(img: np.ndarray) -> np.ndarray:
        mean = float(img.mean())
        best = int(mean / 25.6) % NUM_CLASSES
        row = np.full(NUM_CLASSES, 0.02, dtype=np.float32)
        if mean < 20:  # uncertain: spread the mass
            row[:] = 0.1
            row[best] = 0.19
            row[(best + 1) % NUM_CLASSES] = 0.01
        else:
            row[best] = 0.82
            row[(best + 3) % NUM_CLASSES] = 0.04
        return row / row.sum()


class ScoringFakePredictor(FakePredictor):
    """A :class:`FakePredictor` whose version computes the unfamiliarity score, as a served model does since issue
    27: the mean absolute difference of neighbouring pixels, / 10 (a plain item ~0.5, a fine checkerboard ~20), and
    whose version carries ``unfamiliar_threshold`` (default 5) as the trained one does."""

    def __init__(self, version: str = "7", *, unfamiliar_threshold: float | None = 5.0, **kw) -> None:
        super().__init__(version, **kw)
        from dataclasses import replace

        self.info = replace(self.info, unfamiliar_threshold=unfamiliar_threshold)

    def predict(self, images: np.ndarray):
        from inference.predictor import Scores

        x = np.asarray(images, dtype=np.float64).reshape(-1, 28, 28)
        score = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)) / 10.0
        return Scores(self.predict_proba(images), score.astype(np.float32))
