"""The prediction record: what the API answers for an image and what the nightly job writes for it.

:func:`describe` builds one JSON-ready record per softmax row; :func:`describe_columns` is its column-wise form for
batches (the same values, rounding, tie-breaking and order, at thousands of items a second; the tests check that
the two agree exactly).

An item goes to a person (``needs_review``) for one of two reasons (``review_reason``): ``unfamiliar`` when the
served model's unfamiliarity score is above the version's unfamiliar threshold (it does not look like any of the 10
classes: its class is not worth acting on), else ``low_confidence`` when the confidence is below the review
threshold; ``None`` when neither. A version without the score never says ``unfamiliar`` (``unfamiliarity`` is
``None``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from common.labels import CLASS_NAMES
from inference.versions import ModelInfo

TOP_K = 3
DECIMALS = 6
DEFAULT_REVIEW_THRESHOLD = 0.7  # for a version trained before versions carried their own


def review_threshold_for(configured: float | None, info: ModelInfo | None = None) -> float:
    """The review threshold in force: the operator's ``REVIEW_THRESHOLD`` if set, else the served version's own
    (``ModelInfo.review_threshold``, chosen on validation photos when it was trained), else 0.7."""
    if configured is not None:
        return configured
    own = getattr(info, "review_threshold", None)
    return DEFAULT_REVIEW_THRESHOLD if own is None else float(own)


def unfamiliar_threshold_for(configured: float | None, info: ModelInfo | None = None) -> float | None:
    """The unfamiliar threshold in force: the operator's ``UNFAMILIAR_THRESHOLD`` if set, else the served version's
    own (``ModelInfo.unfamiliar_threshold``, chosen on validation data when it was trained), else None (nothing is
    called unfamiliar)."""
    if configured is not None:
        return configured
    own = getattr(info, "unfamiliar_threshold", None)
    return None if own is None else float(own)


LOW_CONFIDENCE, UNFAMILIAR = "low_confidence", "unfamiliar"


def _flags(
    conf: np.ndarray, unfamiliarity: np.ndarray | None, review_threshold: float, unfamiliar_threshold: float | None
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Per item: unfamiliar, needs_review and the review reason."""
    n = len(conf)
    if unfamiliarity is None or unfamiliar_threshold is None:
        unfamiliar = np.zeros(n, dtype=bool)
    else:
        u = np.asarray(unfamiliarity, dtype=np.float64)
        unfamiliar = np.isfinite(u) & (u > unfamiliar_threshold)
    low = conf < review_threshold
    reasons = [UNFAMILIAR if x else LOW_CONFIDENCE if y else None for x, y in zip(unfamiliar.tolist(), low.tolist(),
                                                                                  strict=True)]  # fmt: skip
    return unfamiliar, unfamiliar | low, reasons


def _rounded(unfamiliarity: np.ndarray | None, n: int) -> list[float | None]:
    if unfamiliarity is None:
        return [None] * n
    return [round(v, DECIMALS) if np.isfinite(v) else None for v in np.asarray(unfamiliarity, np.float64).tolist()]


def describe(
    probs: np.ndarray,
    *,
    review_threshold: float,
    top_k: int = TOP_K,
    unfamiliarity: np.ndarray | None = None,
    unfamiliar_threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Softmax rows (and each item's unfamiliarity, if the version computes it) -> records ``{class_id, class_name,
    confidence, top3, unfamiliarity, unfamiliar, needs_review, review_reason}`` (see the module's docstring)."""
    rows = np.asarray(probs, dtype=np.float64)
    unfamiliar, review, reasons = _flags(rows.max(axis=1, initial=0.0), unfamiliarity, review_threshold,
                                         unfamiliar_threshold)  # fmt: skip
    scores = _rounded(unfamiliarity, len(rows))
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        order = np.argsort(-row, kind="stable")[:top_k]
        best = int(order[0])
        conf = float(row[best])
        out.append(
            {
                "class_id": best,
                "class_name": CLASS_NAMES[best],
                "confidence": round(conf, DECIMALS),
                "top3": [
                    {
                        "class_id": int(k),
                        "class_name": CLASS_NAMES[int(k)],
                        "confidence": round(float(row[k]), DECIMALS),
                    }
                    for k in order
                ],
                "unfamiliarity": scores[i],
                "unfamiliar": bool(unfamiliar[i]),
                "needs_review": bool(review[i]),
                "review_reason": reasons[i],
            }
        )
    return out


_NAMES_JSON = [json.dumps(n) for n in CLASS_NAMES]


COLUMNS = (
    "class_id",
    "class_name",
    "confidence",
    "top3",
    "unfamiliarity",
    "unfamiliar",
    "needs_review",
    "review_reason",
)


def describe_columns(
    probs: np.ndarray,
    review_threshold: float,
    *,
    unfamiliarity: np.ndarray | None = None,
    unfamiliar_threshold: float | None = None,
) -> dict[str, list]:
    """Column-wise :func:`describe`: :data:`COLUMNS`, ``top3`` as the record's list in a JSON string, exactly as
    ``json.dumps`` writes it; one entry per row."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] == 0:
        return {name: [] for name in COLUMNS}
    order = np.argsort(-p, axis=1, kind="stable")[:, :TOP_K]
    top_p = np.take_along_axis(p, order, axis=1)
    best = order[:, 0]
    conf = top_p[:, 0]
    # Python's round() (what describe uses) rounds the exact decimal value; np.round can differ in the last bit.
    rounded = [[round(v, DECIMALS) for v in row] for row in top_p.tolist()]
    names = _NAMES_JSON
    top3 = [
        "["
        + ", ".join(
            f'{{"class_id": {k}, "class_name": {names[k]}, "confidence": {v!r}}}' for k, v in zip(ks, vs, strict=True)
        )
        + "]"
        for ks, vs in zip(order.tolist(), rounded, strict=True)
    ]
    unfamiliar, review, reasons = _flags(conf, unfamiliarity, review_threshold, unfamiliar_threshold)
    return {
        "class_id": best.tolist(),
        "class_name": [CLASS_NAMES[k] for k in best.tolist()],
        "confidence": [r[0] for r in rounded],
        "top3": top3,
        "unfamiliarity": _rounded(unfamiliarity, len(p)),
        "unfamiliar": unfamiliar.tolist(),
        "needs_review": review.tolist(),
        "review_reason": reasons,
    }
