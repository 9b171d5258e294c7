"""The labelled warehouse photos as training data: read from the labels store, through THE preprocessing, split by
photo into training, validation and test shares; and the champion scored on the same warehouse test photos.

Only class answers are used (``other`` and ``unusable`` say nothing about the 10 classes). A label binds a photo's
content hash, so a photo replaced since it was labelled is left out (counted in ``stale``). The split is a pure
function of the photo's content hash (:func:`split_of`): a photo lands in the same share in every run, however
many labels come later, and identical photos under two keys land together, so no photo ever crosses splits.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.settings import Settings, split_shares
from common.storage import Storage, sha256_hex
from data_processing.dataset import Split
from data_processing.preprocessing import ImageError, preprocess_bytes
from monitoring.label_store import Label, LabelStore, digest_of

log = logging.getLogger(__name__)

SHARES = ("train", "val", "test")


def split_of(sha256: str, shares: Sequence[float]) -> str:
    """The share a photo belongs to, from its content hash alone: deterministic, stable as labels accumulate."""
    u = int.from_bytes(hashlib.sha256(f"warehouse-split\0{sha256}".encode()).digest()[:8], "big") / 2**64
    edges = np.cumsum(shares)
    for name, edge in zip(SHARES, edges, strict=True):
        if u < edge:
            return name
    return SHARES[-1]


@dataclass
class WarehouseData:
    """The labelled warehouse photos of one run, by share, with what they came from."""

    splits: dict[str, Split]
    digest: str  # of the label set used (keys, hashes, answers)
    as_of: str | None  # the latest label's time: labels recorded later are new to this run
    counts: dict[str, int] = field(default_factory=dict)  # used per share, and skipped by reason

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def params(self) -> dict[str, Any]:
        """What a training run logs about them (MLflow params)."""
        return {
            "warehouse_labels_digest": self.digest,
            "warehouse_labels_as_of": self.as_of or "none",
            **{f"warehouse_{k}": v for k, v in sorted(self.counts.items())},
        }


def _empty() -> Split:
    return Split(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), np.zeros(0, dtype=object))


def build_warehouse(storage: Storage, labels: dict[tuple[str, str], Label], shares: Sequence[float]) -> WarehouseData:
    """Read, check and preprocess every labelled photo with a class answer; split them by content hash."""
    rows: dict[str, list[tuple[np.ndarray, int, str]]] = {s: [] for s in SHARES}
    counts = {"labels": len(labels), "not_a_class": 0, "stale": 0, "unreadable": 0}
    used: list[Label] = []
    for (key, sha), label in sorted(labels.items()):
        if label.class_id is None:
            counts["not_a_class"] += 1
            continue
        try:
            data = storage.get_bytes(key)
        except (OSError, ValueError):  # gone since it was labelled
            counts["stale"] += 1
            continue
        if sha256_hex(data) != sha:
            counts["stale"] += 1
            continue
        try:
            image = preprocess_bytes(data)  # THE preprocessing: what the model will see in service
        except ImageError:
            counts["unreadable"] += 1
            continue
        rows[split_of(sha, shares)].append((image, label.class_id, key))
        used.append(label)
    splits = {}
    for name in SHARES:
        if rows[name]:
            images, ids, keys = zip(*rows[name], strict=True)
            splits[name] = Split(np.stack(images), np.asarray(ids, np.int64), np.asarray(keys, dtype=object))
        else:
            splits[name] = _empty()
        counts[name] = len(splits[name])
    as_of = max((lab.recorded_at for lab in labels.values()), default=None)
    return WarehouseData(splits, digest_of(used)[:16], as_of, counts)


def load_warehouse(settings: Settings, storage: Storage) -> WarehouseData:
    """The store's current labels as :class:`WarehouseData` (``WAREHOUSE_SPLIT`` shares)."""
    data = build_warehouse(storage, LabelStore(storage).current(), split_shares(settings.learning.warehouse_split))
    log.info(
        "warehouse labels: %d photos (train %d, val %d, test %d; %d not a class, %d stale, %d unreadable), digest %s",
        len(data),
        data.counts["train"],
        data.counts["val"],
        data.counts["test"],
        data.counts["not_a_class"],
        data.counts["stale"],
        data.counts["unreadable"],
        data.digest,
    )
    return data


def with_warehouse(split: Split, extra: Split, repeats: int = 1) -> Split:
    """``split`` followed by ``repeats`` copies of ``extra`` (the same photos seen more often in an epoch)."""
    if len(extra) == 0 or repeats <= 0:
        return split
    return Split(
        np.concatenate([split.images, *[extra.images] * repeats]),
        np.concatenate([split.labels, *[extra.labels] * repeats]),
        np.concatenate([split.keys.astype(object), *[extra.keys] * repeats]),
    )


def repeats_for(n_clean: int, n_warehouse: int, share: float, most: int = 20) -> int:
    """How often each warehouse photo is repeated so that they make up about ``share`` of an epoch."""
    if n_warehouse == 0 or share <= 0:
        return 0
    return int(np.clip(round(share * n_clean / ((1 - share) * n_warehouse)), 1, most))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else None


def champion_accuracy(settings: Settings, test: Split) -> float | None:
    """The current champion's accuracy on ``test`` (None without a champion, or when it cannot be loaded).

    Scored through its Keras graph, as the challenger is: the gate compares networks, not runtimes (and choosing
    the fastest runtime would time every one of them first)."""
    if len(test) == 0:
        return None
    from inference.loading import load_predictor

    try:
        predictor = load_predictor(
            f"models:/{settings.model_name}@champion", settings.mlflow_tracking_uri, runtime="keras"
        )
    except Exception as exc:  # no champion yet, or a registry problem: the gate then has nothing to compare
        log.info("no champion to score on the warehouse test photos: %s", exc)
        return None
    return accuracy(predictor.predict_proba(test.images), test.labels)
