"""The prediction record: what the API answers for an image and what the nightly job writes for it.

:func:`describe` builds one JSON-ready record per softmax row; :func:`describe_columns` is its column-wise form for
batches (the same values, rounding, tie-breaking and order, at thousands of items a second; the tests check that
the two agree exactly).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from common.labels import CLASS_NAMES

TOP_K = 3
DECIMALS = 6
DEFAULT_REVIEW_THRESHOLD = 0.7  # for a version trained before versions carried their own


def review_threshold_for(configured: float | None, info: Any = None) -> float:
    """The review threshold in force: the operator's ``REVIEW_THRESHOLD`` if set, else the served version's own
    (``ModelInfo.review_threshold``, chosen on validation photos when it was trained), else 0.7."""
    if configured is not None:
        return configured
    own = getattr(info, "review_threshold", None)
    return DEFAULT_REVIEW_THRESHOLD if own is None else float(own)


def describe(probs: np.ndarray, *, review_threshold: float, top_k: int = TOP_K) -> list[dict[str, Any]]:
    """Softmax rows -> records ``{class_id, class_name, confidence, top3, needs_review}``.

    ``needs_review`` is true when the confidence is below ``review_threshold``: a person should look."""
    out: list[dict[str, Any]] = []
    for row in np.asarray(probs, dtype=np.float64):
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
                "needs_review": conf < review_threshold,
            }
        )
    return out


_NAMES_JSON = [json.dumps(n) for n in CLASS_NAMES]


def describe_columns(probs: np.ndarray, review_threshold: float) -> dict[str, list]:
    """Column-wise :func:`describe`: ``class_id``, ``class_name``, ``confidence``, ``top3`` (the record's list as
    a JSON string, exactly as ``json.dumps`` writes it) and ``needs_review``, one entry per row."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] == 0:
        return {"class_id": [], "class_name": [], "confidence": [], "top3": [], "needs_review": []}
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
    return {
        "class_id": best.tolist(),
        "class_name": [CLASS_NAMES[k] for k in best.tolist()],
        "confidence": [r[0] for r in rounded],
        "top3": top3,
        "needs_review": (conf < review_threshold).tolist(),
    }
