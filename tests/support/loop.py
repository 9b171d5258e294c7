"""Helpers for the learning-loop tests: a finished night in a store (photos, review queue, audit sample, summary),
written in the nightly job's output format, without running the job."""

from __future__ import annotations

import csv
import io
import json

from common.images import encode_png
from common.labels import CLASS_NAMES
from common.storage import Storage, sha256_hex
from monitoring.nights import AUDIT, NEEDS_REVIEW, SUCCESS, SUMMARY, NightRef
from tests.support.models import make_tiny_images

COLUMNS = ["key", "sha256", "size", "status", "class_id", "class_name", "confidence", "top3", "needs_review"]


def _row(key: str, data: bytes, class_id: int, confidence: float, review: bool) -> dict:
    other = (class_id + 1) % 10
    top3 = [
        {"class_id": class_id, "class_name": CLASS_NAMES[class_id], "confidence": confidence},
        {"class_id": other, "class_name": CLASS_NAMES[other], "confidence": round((1 - confidence) * 0.7, 6)},
        {"class_id": (class_id + 2) % 10, "class_name": CLASS_NAMES[(class_id + 2) % 10], "confidence": 0.01},
    ]
    return {"key": key, "sha256": sha256_hex(data), "size": len(data), "status": "scored", "class_id": class_id,
            "class_name": CLASS_NAMES[class_id], "confidence": confidence, "top3": json.dumps(top3),
            "needs_review": str(review).lower()}  # fmt: skip


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_night(
    storage: Storage, *, date: str = "2026-12-01", run_id: str = "20261201T000000000Z-aaaaaa", review: int = 6,
    audit: int = 6, version: str = "1", seed: int = 0,
) -> tuple[NightRef, list[dict], list[dict], list[int]]:  # fmt: skip
    """A finished night: ``review`` doubtful and ``audit`` audited photos under incoming/<date>/; returns the night,
    its review rows, its audit rows and the photos' true classes (review first)."""
    images, classes = make_tiny_images(review + audit, seed=seed)
    night = NightRef(date, run_id)
    rows = []
    for i, (img, c) in enumerate(zip(images, classes, strict=True)):
        data = encode_png(img)
        key = f"incoming/{date}/ret-{seed}-{i:04d}.png"
        storage.put_bytes(key, data)
        doubtful = i < review
        rows.append(_row(key, data, int(c) if i % 3 else (int(c) + 1) % 10, 0.55 if doubtful else 0.96, doubtful))
    review_rows, audit_rows = rows[:review], rows[review:]
    storage.put_bytes(f"{night.prefix}/{NEEDS_REVIEW}", _csv(review_rows))
    storage.put_bytes(f"{night.prefix}/{AUDIT}", _csv(audit_rows))
    summary = {"date": date, "run_id": run_id, "scored": 10 * (review + audit), "needs_review": review,
               "needs_review_rate": 0.2, "auto_routed": 8 * (review + audit), "audit_sample": audit,
               "model": {"version": version}, "expected_accuracy": {"all": 0.9, "auto_routed": 0.96},
               "drift": {"status": "ok"}}  # fmt: skip
    storage.put_bytes(f"{night.prefix}/{SUMMARY}", json.dumps(summary).encode())
    storage.put_bytes(f"{night.prefix}/{SUCCESS}", b"")
    return night, review_rows, audit_rows, [int(c) for c in classes]
