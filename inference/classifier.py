"""The one call from bytes to answer: decode -> THE preprocessing -> predict -> record, for the API and the night.

:meth:`Classifier.classify` is the API's: a request's images (bytes, or uploads with ``read()`` and ``filename``)
under one :class:`~data_processing.preprocessing.DecodeBudget` -> one :class:`Answer` (a record per image, in
order), or :class:`Refused` for the first image that cannot be answered (its HTTP status, a stable code and a short
reason that names the image; the decoder's own words stay in ``detail``, for the log).

The night's column-wise twin comes in two steps so that decoding stays in its worker processes: :func:`prepare_item`
(a module function, picklable, no model: bytes -> a model image or a :class:`Refusal` with the code and reason the
night's quarantine lists) runs in the workers; :meth:`Classifier.classify_columns` (model images -> a
:class:`ColumnAnswer`: scores and :func:`~inference.records.describe_columns`'s columns) runs where the model is.

Each image meets THE preprocessing once: :func:`~data_processing.preprocessing.preprocess_bytes` turns its bytes
into a 28x28 model image, :func:`~data_processing.preprocessing.to_model_batch` turns the batch into the model's
input once, and the predictor runs that input (:meth:`inference.predictor.Predictor.predict_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from data_processing.preprocessing import (
    MAX_PIXELS,
    REQUEST_DECODE_SECONDS,
    DecodeBudget,
    ImageError,
    preprocess_bytes,
    to_model_batch,
)
from inference.predictor import PredictorLike, Scores, scores_of
from inference.records import describe, describe_columns, review_threshold_for, unfamiliar_threshold_for
from inference.versions import ModelInfo

MAX_SHOWN_FILENAME = 255  # a file system's longest name; a 100 KB "filename" was echoed whole
# Each of the night's inputs gets the API's per-request decoding budget, with its seconds as a hard stop (a decoding
# still running then is killed and the input quarantined ``decode_time_exceeded``).
ITEM_DECODE_SECONDS = REQUEST_DECODE_SECONDS


class Upload(Protocol):
    """An uploaded file as the API receives it (werkzeug's ``FileStorage``): read once, named by the client."""

    filename: str | None

    def read(self) -> bytes: ...


def shown_filename(name: str | None) -> str | None:
    """A client's file name as the API repeats it: at most :data:`MAX_SHOWN_FILENAME` characters."""
    if name is None or len(name) <= MAX_SHOWN_FILENAME:
        return name
    return name[: MAX_SHOWN_FILENAME - 1] + "…"


@dataclass(frozen=True)
class Thresholds:
    """The thresholds in force for one version: review (confidence below it goes to a person) and unfamiliar
    (score above it: not like any class; None: nothing is called unfamiliar)."""

    review: float
    unfamiliar: float | None

    @classmethod
    def of(cls, info: ModelInfo | None, review: float | None = None, unfamiliar: float | None = None) -> Thresholds:
        """The operator's values where set (``REVIEW_THRESHOLD``, ``UNFAMILIAR_THRESHOLD``), else the version's own,
        else the defaults (:func:`~inference.records.review_threshold_for`)."""
        return cls(review_threshold_for(review, info), unfamiliar_threshold_for(unfamiliar, info))

    def flags(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Per record 1.0 (unfamiliar), 0.0 (not) or NaN (not judged: its version computes no unfamiliarity score,
        or there is no threshold): what the drift window counts."""
        unknown = [self.unfamiliar is None or r["unfamiliarity"] is None for r in records]
        return np.array([np.nan if u else float(r["unfamiliar"]) for r, u in zip(records, unknown, strict=True)])


class Refused(Exception):
    """An image the API will not answer: ``status`` (HTTP), a stable ``code`` and a ``message`` safe to show the client
    (it names the image); ``detail`` is the decoder's own words, for the log only."""

    def __init__(self, status: int, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


@dataclass(frozen=True)
class Answer:
    """What :meth:`Classifier.classify` answers: one record per image (the API's fields, :func:`describe`'s plus the
    seed API's ``predicted_class`` and ``filename``), the model images (for the drift feed), their scores and, per
    image, whether it was judged unfamiliar (:meth:`Thresholds.flags`)."""

    records: list[dict[str, Any]]
    images: np.ndarray
    scores: Scores
    unfamiliar: np.ndarray

    @property
    def needs_review(self) -> int:
        return sum(bool(r["needs_review"]) for r in self.records)


@dataclass(frozen=True)
class ColumnAnswer:
    """The night's twin of :class:`Answer`: the scores of a batch's model images and their records column by column
    (:data:`inference.records.COLUMNS`, exactly what :func:`describe` says of each, top3 as its JSON)."""

    scores: Scores
    columns: dict[str, list]

    @classmethod
    def of(cls, scores: Scores, thresholds: Thresholds) -> ColumnAnswer:
        cols = describe_columns(
            scores.probs,
            thresholds.review,
            unfamiliarity=scores.unfamiliarity,
            unfamiliar_threshold=thresholds.unfamiliar,
        )
        return cls(scores, cols)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Refusal:
    """The night's record of an input that did not decode: its error code and the reason its quarantine row shows
    (operators see the decoder's words too)."""

    code: str
    reason: str


def prepare_item(data: bytes) -> np.ndarray | Refusal:
    """The night's prepare step (runs in its worker processes): one input's bytes -> its 28x28 model image, or the
    :class:`Refusal` that quarantines it. Never raises for a bad input: every item gets its row."""
    try:
        return preprocess_bytes(data, budget=DecodeBudget(max_seconds=ITEM_DECODE_SECONDS))
    except ImageError as exc:
        return Refusal(exc.code, f"{exc}: {exc.detail}" if exc.detail else str(exc))
    except Exception as exc:
        return Refusal("invalid_image", f"{type(exc).__name__}: {exc}")


def model_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Model images stacked as one (N, 28, 28) uint8 array (an empty batch too)."""
    return np.stack(images) if len(images) else np.zeros((0, 28, 28), dtype=np.uint8)


def score_images(predictor: PredictorLike, images: np.ndarray) -> Scores:
    """(N, 28, 28) uint8 model images -> :class:`Scores`: made model input once, run once (in chunks of the
    predictor's ``max_batch``). A predictor without ``predict_batch`` (a test's fake) is given the images."""
    run = getattr(predictor, "predict_batch", None)
    if callable(run):
        return run(to_model_batch(images))
    return scores_of(predictor, images)


class Classifier:
    """One served version and its thresholds: images in, records out. Cheap to build (no state but its arguments);
    safe to call from many threads when its predictor is."""

    def __init__(self, predictor: PredictorLike, thresholds: Thresholds, *, max_pixels: int = MAX_PIXELS) -> None:
        self.predictor = predictor
        self.thresholds = thresholds
        self.max_pixels = max_pixels

    def classify(self, images: Sequence[bytes | Upload], budget: DecodeBudget) -> Answer:
        """A request's images -> their :class:`Answer`, in order; :class:`Refused` for the first image that cannot
        be decoded within ``budget`` (shared by all of them) or is not an image the preprocessing accepts."""
        decoded = model_images([self._decode(i, image, len(images), budget) for i, image in enumerate(images)])
        scores = self.score(decoded)
        records = describe(
            scores.probs,
            review_threshold=self.thresholds.review,
            unfamiliarity=scores.unfamiliarity,
            unfamiliar_threshold=self.thresholds.unfamiliar,
        )
        for record, image in zip(records, images, strict=True):
            record["predicted_class"] = record["class_id"]  # the seed API's field, kept for its clients
            record["filename"] = shown_filename(getattr(image, "filename", None))
        return Answer(records, decoded, scores, self.thresholds.flags(records))

    def classify_columns(self, images: np.ndarray) -> ColumnAnswer:
        """The night's answer step: the model images its workers prepared (:func:`prepare_item`) -> scores and
        record columns."""
        return ColumnAnswer.of(self.score(images), self.thresholds)

    def score(self, images: np.ndarray) -> Scores:
        """(N, 28, 28) uint8 model images -> :class:`Scores` (:func:`score_images`)."""
        return score_images(self.predictor, images)

    def _decode(self, i: int, image: bytes | Upload, n: int, budget: DecodeBudget) -> np.ndarray:
        data = image if isinstance(image, bytes | bytearray) else image.read()
        try:
            return preprocess_bytes(data, max_pixels=self.max_pixels, budget=budget)
        except ImageError as exc:
            name = shown_filename(getattr(image, "filename", None))
            where = f"{name!r}: " if n == 1 else f"file {i} ({name!r}): "
            raise Refused(exc.http_status, exc.code, where + str(exc), exc.detail) from exc
