"""Helpers of the inference tests: softmax rows with the awkward cases (ties, exact halves) built in."""

from __future__ import annotations

import numpy as np


def random_probs(n: int, seed: int) -> np.ndarray:
    """``n`` softmax rows (n >= 2): row 0 all equal (ties must break stably, lowest class first), row 1 two
    exact halves."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(10, 0.3), size=n).astype(np.float32)
    p[0] = 0.1
    p[1, :] = 0.0
    p[1, [3, 7]] = 0.5
    return p
