"""The photo renderers' worker processes: spawned, at the lowest CPU priority, created when the first job needs them
(the photo benchmark's sets and the unfamiliar photos share one pool)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def _lowest_priority() -> None:  # worker initializer: only the cycles nobody else wants
    with contextlib.suppress(OSError):
        os.nice(19)


def render_executor(workers: int) -> ProcessPoolExecutor:
    """Worker processes for rendering: spawned (never forked from a process running TensorFlow's threads), each at
    the lowest CPU priority."""
    import multiprocessing

    return ProcessPoolExecutor(
        max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"), initializer=_lowest_priority
    )


class LazyExecutor:
    """A :func:`render_executor` created when the first job needs it (nothing to render: no processes)."""

    def __init__(self, workers: int, executor: ProcessPoolExecutor | None = None) -> None:
        self.workers, self.executor = workers, executor

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self.executor is None:
            self.executor = render_executor(self.workers)
        return self.executor.submit(fn, *args)
