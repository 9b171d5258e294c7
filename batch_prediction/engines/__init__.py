"""Scoring engines: turn a list of stored inputs into (loaded batch, classifier answer) pairs, in input order.

``local`` (default) answers in this process with worker processes for read + prepare; ``ray`` runs the
same steps on Ray Data. Both use the same loading code and the same classifier (:mod:`inference.classifier`:
prepare in the workers, answer column-wise); the job writes the outputs and the ledger from the driver, so every
engine produces the same files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from batch_prediction.reading import LoadedBatch
from common.storage import ObjectInfo
from inference.classifier import ColumnAnswer

ENGINES = ("local", "ray")


class Engine(Protocol):
    runtime: str  # the inference runtime that scores (inference.runtimes), known once scoring has started

    def score(self, todo: Sequence[ObjectInfo], batch_size: int) -> Iterator[tuple[LoadedBatch, ColumnAnswer]]:
        """Yield each batch of ``todo`` (consecutive, in order) with the classifier's answer for its scored items
        (:meth:`inference.classifier.Classifier.classify_columns`: scores and record columns)."""


def chunks(items: Sequence[ObjectInfo], size: int) -> Iterator[Sequence[ObjectInfo]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
