"""Scoring engines: turn a list of stored inputs into (loaded batch, probabilities) pairs, in input order.

``local`` (default) scores in this process with worker processes for read + preprocess; ``ray`` runs the
same steps on Ray Data. Both use the same loading code and the same predictor; the job writes the outputs
and the ledger from the driver, so every engine produces the same files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from batch_prediction.loading import LoadedBatch
from common.storage import ObjectInfo
from inference.predictor import Scores

ENGINES = ("local", "ray")


class Engine(Protocol):
    runtime: str  # the inference runtime that scores (inference.runtimes), known once scoring has started

    def score(self, todo: Sequence[ObjectInfo], batch_size: int) -> Iterator[tuple[LoadedBatch, Scores]]:
        """Yield each batch of ``todo`` (consecutive, in order) with its (n_ok, 10) probabilities."""


def chunks(items: Sequence[ObjectInfo], size: int) -> Iterator[Sequence[ObjectInfo]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
