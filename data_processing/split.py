"""Deterministic stratified validation split carved from the training set (the test set stays untouched).

Within each class, items are ranked by ``sha256("<seed>:<key>")`` and the lowest ``per_class`` go to validation.
The choice depends only on the keys, the labels and the seed: not on input order, not on the machine, and adding
new items moves at most the items they displace (a plain shuffle would reshuffle everything).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

VAL_PER_CLASS = 500
VAL_MAX_FRACTION = 0.1
SEED = 0


def val_count(class_size: int, per_class: int = VAL_PER_CLASS, max_fraction: float = VAL_MAX_FRACTION) -> int:
    """How many of a class go to validation: ``per_class``, but never more than ``max_fraction`` of the class
    (so small datasets keep most items for training); at least 1 when the class has 2 or more items."""
    cap = int(class_size * max_fraction)
    if class_size >= 2:
        cap = max(cap, 1)
    return max(0, min(per_class, cap))


def _rank_key(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def stratified_split(
    keys: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    *,
    per_class: int = VAL_PER_CLASS,
    max_fraction: float = VAL_MAX_FRACTION,
    seed: int = SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(train_idx, val_idx)``: sorted positions into ``keys``. Pure and deterministic."""
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    labels = np.asarray(labels)
    val: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranked = sorted(members, key=lambda i: _rank_key(seed, keys[i]))
        val.extend(int(i) for i in ranked[: val_count(len(members), per_class, max_fraction)])
    val_idx = np.array(sorted(val), dtype=np.int64)
    mask = np.ones(len(keys), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx
