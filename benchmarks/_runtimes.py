"""Model-only measurements shared by the benchmarks: a runtime's time per call at batch 1 and its images/s at a
large batch, median of repeats. (Benchmarks run as scripts, so their folder is on sys.path.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of one of ``calls`` consecutive calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def speed(run: Callable[[np.ndarray], object], repeats: int = 5, big: int = 1024) -> tuple[float, float]:
    """(milliseconds per call at batch 1, images per second at batch ``big``) of ``run`` on random images."""
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 28, 28, 1), dtype=np.float32)
    xb = rng.random((big, 28, 28, 1), dtype=np.float32)
    one = median_seconds(lambda: run(x1), 300, repeats)
    many = median_seconds(lambda: run(xb), 3, repeats)
    return one * 1000, big / many
