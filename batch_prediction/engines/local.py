"""The default engine: read + prepare in worker processes (or threads), one classifier call per batch here.

Batches are loaded ahead by a bounded number of in-flight tasks (``prefetch``), so memory holds at most a
few batches of images however many inputs there are. Workers are *spawned* (not forked): forking after
TensorFlow has started its thread pools is unsafe, and the workers need only Pillow and NumPy.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from batch_prediction.engines import chunks
from batch_prediction.reading import (
    MAX_OBJECT_BYTES,
    LoadedBatch,
    StoreAddress,
    init_worker,
    load_batch,
    load_batch_in_worker,
)
from common.storage import ObjectInfo, Storage
from inference.classifier import Classifier, ColumnAnswer


class LocalEngine:
    """Workers prepare (read + decode + THE preprocessing, :func:`inference.classifier.prepare_item`); this process
    answers (:meth:`~inference.classifier.Classifier.classify_columns`). ``address`` is where the worker processes
    open the store; ``workers=0`` reads in a thread of this process with ``storage``."""

    def __init__(
        self,
        storage: Storage,
        classifier: Classifier,
        *,
        address: StoreAddress,
        workers: int = 2,
        prefetch: int = 2,
        io_threads: int = 16,
        max_object_bytes: int = MAX_OBJECT_BYTES,
    ) -> None:
        self.storage = storage
        self.classifier = classifier
        predictor = classifier.predictor
        self.runtime = str(getattr(predictor, "runtime_name", type(predictor).__name__))
        self.runtime_choice = getattr(predictor, "choice", None)  # how it was chosen (inference.choice), if it was
        self.address = address
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.io_threads = io_threads
        self.max_object_bytes = max_object_bytes

    def _executor(self) -> Executor:
        if self.workers <= 0:
            return ThreadPoolExecutor(1)
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.address, os.getpid()),
        )

    def _submit(self, pool: Executor, infos: Sequence[ObjectInfo]) -> Future[LoadedBatch]:
        if self.workers <= 0:
            return pool.submit(
                load_batch, self.storage, list(infos), io_threads=self.io_threads, max_bytes=self.max_object_bytes
            )
        return pool.submit(load_batch_in_worker, list(infos), self.io_threads, self.max_object_bytes)

    def score(self, todo: Sequence[ObjectInfo], batch_size: int) -> Iterator[tuple[LoadedBatch, ColumnAnswer]]:
        if not todo:
            return
        pending = chunks(todo, batch_size)
        in_flight: deque[Future[LoadedBatch]] = deque()
        limit = max(self.workers, 1) + self.prefetch
        with self._executor() as pool:
            try:
                for infos in pending:
                    in_flight.append(self._submit(pool, infos))
                    if len(in_flight) >= limit:
                        break
                while in_flight:
                    batch = in_flight.popleft().result()
                    nxt = next(pending, None)
                    if nxt is not None:
                        in_flight.append(self._submit(pool, nxt))
                    yield batch, self.classifier.classify_columns(batch.images)
            finally:
                for fut in in_flight:
                    fut.cancel()
