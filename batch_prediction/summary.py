"""The night's statistics, accumulated part by part (bounded memory), and the drift window. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from common.labels import CLASS_NAMES, NUM_CLASSES

CONFIDENCE_BINS = 20  # the histogram in summary.json / MLflow
_FINE_BINS = 1000  # quantiles are read off a fine histogram, so memory does not grow with the night
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Quarantined entries that are not photos at all (a .DS_Store, an unfinished write): reported and listed once, but
# left out of the failure rate, which says how many returns photos could not be scored.
NOT_PHOTOS = frozenset({"hidden_file", "temporary_file"})


class NightStats:
    """Counts and distributions over the committed parts of a run."""

    def __init__(self) -> None:
        self.scored = 0
        self.failed = 0
        self.needs_review = 0
        self.unfamiliar = 0
        self.unfamiliarity_scored = 0  # scored items whose version computes the score (the share's denominator)
        self.review_reasons: Counter[str] = Counter()
        self.conf_sum = 0.0
        self.fine_hist = np.zeros(_FINE_BINS, dtype=np.int64)
        self.class_counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        self.error_codes: Counter[str] = Counter()
        self.auto_routed = 0  # scored items that no person looks at (confidence at or above the threshold)
        self.auto_conf_sum = 0.0
        self.audit_sample = 0  # of those, how many the night's audit sample sends to people

    def add(self, records: pa.Table) -> None:
        cols = records.to_pydict()
        status = np.asarray(cols["status"])
        ok = status == "scored"
        self.scored += int(ok.sum())
        self.failed += int((~ok).sum())
        conf = np.asarray([c for c, good in zip(cols["confidence"], ok, strict=True) if good], dtype=np.float64)
        self.conf_sum += float(conf.sum())
        self.fine_hist += np.histogram(conf, bins=_FINE_BINS, range=(0.0, 1.0))[0]
        classes = np.asarray([c for c, good in zip(cols["class_id"], ok, strict=True) if good], dtype=np.int64)
        self.class_counts += np.bincount(classes, minlength=NUM_CLASSES)
        review = np.asarray([bool(r) for r, good in zip(cols["needs_review"], ok, strict=True) if good], dtype=bool)
        self.needs_review += int(review.sum())
        self.auto_routed += int((~review).sum())
        self.auto_conf_sum += float(conf[~review].sum())
        n = len(status)  # parts written before the unfamiliarity columns existed have none of them
        scores = cols.get("unfamiliarity", [None] * n)
        flags = cols.get("unfamiliar", [None] * n)
        self.unfamiliarity_scored += sum(good and s is not None for s, good in zip(scores, ok, strict=True))
        self.unfamiliar += sum(bool(good and f) for f, good in zip(flags, ok, strict=True))
        self.review_reasons.update(
            r for r, good in zip(cols.get("review_reason", [None] * n), ok, strict=True) if good and r
        )
        self.error_codes.update(c for c, good in zip(cols["error_code"], ok, strict=True) if not good)

    @property
    def total(self) -> int:
        return self.scored + self.failed

    @property
    def not_photos(self) -> int:
        return sum(self.error_codes[code] for code in NOT_PHOTOS)

    @property
    def failure_rate(self) -> float:
        photos = self.total - self.not_photos
        return (self.failed - self.not_photos) / photos if photos else 0.0

    def quantile(self, q: float) -> float | None:
        if self.scored == 0:
            return None
        cum = np.cumsum(self.fine_hist)
        idx = int(np.searchsorted(cum, q * self.scored, side="left"))
        return round((min(idx, _FINE_BINS - 1) + 0.5) / _FINE_BINS, 4)  # bin centre: +-0.0005

    def to_dict(self) -> dict:
        coarse = self.fine_hist.reshape(CONFIDENCE_BINS, -1).sum(axis=1)
        return {
            "items": self.total,
            "scored": self.scored,
            "failed": self.failed,
            "failure_rate": self.failure_rate,
            "not_photos": self.not_photos,
            "needs_review": self.needs_review,
            "needs_review_rate": self.needs_review / self.scored if self.scored else 0.0,
            "review_reasons": dict(sorted(self.review_reasons.items())),
            # Items called unfamiliar (not one of the 10), and their share of the items scored by a version that
            # computes the score (None: none was)
            "unfamiliar": self.unfamiliar,
            "unfamiliar_rate": self.unfamiliar / self.unfamiliarity_scored if self.unfamiliarity_scored else None,
            "confidence": {
                "mean": self.conf_sum / self.scored if self.scored else None,
                "quantiles": {f"p{round(q * 100):02d}": self.quantile(q) for q in QUANTILES},
                "histogram": {
                    "bin_edges": np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1).round(4).tolist(),
                    "counts": coarse.tolist(),
                },
            },
            "classes": {CLASS_NAMES[k]: int(n) for k, n in enumerate(self.class_counts)},
            "auto_routed": self.auto_routed,
            "audit_sample": self.audit_sample,
            # Label-free: the served model's confidences are calibrated, so their mean is the accuracy to expect
            # (of every scored item, and of those routed without a person).
            "expected_accuracy": {
                "all": self.conf_sum / self.scored if self.scored else None,
                "auto_routed": self.auto_conf_sum / self.auto_routed if self.auto_routed else None,
            },
            "failures_by_reason": dict(sorted(self.error_codes.items())),
        }


def sample_indices(total: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform sample without replacement of ``min(size, total)`` out of ``total``."""
    if total <= size:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))


def concat_window(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-part feature dicts -> one window (the whole night is one window)."""
    parts = [p for p in parts if p and len(next(iter(p.values())))]
    if not parts:
        return {}
    # A feature some parts lack (written before it existed: a night continued across an upgrade) is NaN there
    keys = list(dict.fromkeys(k for p in parts for k in p))
    return {k: np.concatenate([np.asarray(p[k]) if k in p else np.full(_rows(p), np.nan) for p in parts]) for k in keys}


def _rows(part: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(part.values())))
