"""Micro-batching: concurrent requests share forward passes, and each caller gets exactly its own rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from model_serving.batching import MicroBatcher


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
