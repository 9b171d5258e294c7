"""What a night writes: record tables (pure builders) and the output layout in the store.

Layout of one run, under ``predictions/<YYYY-MM-DD>/<run-id>/``::

    parquet/part-00000.parquet   every item of batch 0 (scored and failed): the batch's COMMIT POINT
    csv/part-00000.csv           the same rows as CSV (written just before the Parquet part)
    _drift/part-00000.npz        per-item drift features of the scored rows (written just before it)
    needs_review.csv             scored items for people: unfamiliar, or below the review threshold (review_reason)
    audit.csv                    a seeded random sample of the other (auto-routed) items, for people (monitoring.audit)
    quarantine.csv               items that could not be scored, with the reason
    summary.json                 the night's counts, histograms, drift result, resources
    _SUCCESS                     written last

A batch's Parquet part is written after its CSV and drift side files, so a part that exists is whole and
complete; side files without a Parquet part are leftovers of a killed run and are overwritten or removed
when that run is completed.

``predictions/LATEST`` names the output folder of the last night that scored something (one line, relative to the
store: ``predictions/<date>/<run-id>``); a night with nothing new writes no folder and leaves it alone.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.labels import NUM_CLASSES
from common.storage import ObjectNotFound, ObjectTooLarge, Storage, join_key
from inference.classifier import ColumnAnswer
from monitoring.nights import PREDICTIONS_PREFIX  # the layout's names are owned below the stages that read them

LATEST_KEY = f"{PREDICTIONS_PREFIX}/LATEST"
PART_RE = re.compile(r"part-(\d{5,})\.parquet$")

RECORD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),  # bytes of the input object
        ("status", pa.string()),  # scored | failed
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
        ("top3", pa.string()),  # JSON, exactly inference.records.describe()'s "top3"
        ("needs_review", pa.bool_()),
        ("review_reason", pa.string()),  # unfamiliar | low_confidence (inference.records), empty when not for review
        ("unfamiliar", pa.bool_()),  # not like any of the 10 classes (false: a version without the score)
        ("unfamiliarity", pa.float64()),  # the served model's score (empty: a version without it)
        ("error_code", pa.string()),
        ("error", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.string()),
    ]
)


@dataclass(frozen=True)
class Failure:
    """An input that could not be scored, and why (``code`` is the ImageError code, or ``read_error``)."""

    key: str
    sha256: str
    size: int
    code: str
    message: str


def run_prefix(date: str, run_id: str) -> str:
    return f"{PREDICTIONS_PREFIX}/{date}/{run_id}"


def latest_pointer(output_prefix: str) -> bytes:
    """The content of ``predictions/LATEST`` naming ``output_prefix``."""
    return f"{output_prefix}\n".encode()


def read_latest(storage: Storage) -> str | None:
    """The output folder ``predictions/LATEST`` names, or None before the first night with work."""
    try:
        return storage.get_bytes(LATEST_KEY, max_bytes=4096).decode().strip() or None
    except (ObjectNotFound, ObjectTooLarge, UnicodeDecodeError):
        return None


def part_name(kind: str, part: int) -> str:
    ext = {"parquet": "parquet", "csv": "csv", "_drift": "npz"}[kind]
    return f"{kind}/part-{part:05d}.{ext}"


class Rows(Protocol):
    """A batch's items as the engines hand them over: the scored ones (keys, hashes and sizes, in input order) and
    the ones that could not be scored (:class:`~batch_prediction.reading.LoadedBatch` is one)."""

    keys: Sequence[str]
    shas: Sequence[str]
    sizes: Sequence[int]
    failures: Sequence[Failure]


@dataclass(frozen=True)
class Stamp:
    """What every row of a night's batch says of who scored it and when."""

    model_name: str
    model_version: str
    run_id: str
    scored_at: str


def build_records(rows: Rows, answer: ColumnAnswer, stamp: Stamp) -> pa.Table:
    """One batch's rows: scored items (in input order, with the classifier's column-wise answer,
    :meth:`inference.classifier.Classifier.classify_columns`) then failed ones; one row per input item."""
    keys, failures = rows.keys, rows.failures
    n_ok, n_bad = len(keys), len(failures)
    probs = answer.scores.probs
    if probs.shape != (n_ok, NUM_CLASSES):
        raise ValueError(f"expected probabilities of shape ({n_ok}, {NUM_CLASSES}), got {probs.shape}")
    cols = answer.columns
    none_bad = [None] * n_bad
    n = n_ok + n_bad
    data = {
        "key": list(keys) + [f.key for f in failures],
        "sha256": list(rows.shas) + [f.sha256 for f in failures],
        "size": list(rows.sizes) + [f.size for f in failures],
        "status": ["scored"] * n_ok + ["failed"] * n_bad,
        **{name: cols[name] + none_bad for name in _ANSWER_COLUMNS},
        "error_code": [None] * n_ok + [f.code for f in failures],
        "error": [None] * n_ok + [f.message for f in failures],
        "model_name": [stamp.model_name] * n,
        "model_version": [stamp.model_version] * n,
        "run_id": [stamp.run_id] * n,
        "scored_at": [stamp.scored_at] * n,
    }
    return pa.Table.from_pydict(data, schema=RECORD_SCHEMA)


# The record columns the answer fills, in RECORD_SCHEMA's order (from_pydict follows the schema's order anyway).
_ANSWER_COLUMNS = (
    "class_id",
    "class_name",
    "confidence",
    "top3",
    "needs_review",
    "review_reason",
    "unfamiliar",
    "unfamiliarity",
)


def table_to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def table_to_csv(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue()


def parquet_to_table(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)


def features_to_npz(features: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in features.items()})
    return buf.getvalue()


def npz_to_features(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def committed_parts(storage: Storage, output_prefix: str) -> dict[int, str]:
    """Part number -> key of every committed (Parquet) output part of a run."""
    out: dict[int, str] = {}
    for info in storage.list(join_key(output_prefix, "parquet") + "/"):
        if m := PART_RE.search(info.key):
            out[int(m.group(1))] = info.key
    return out


def remove_orphans(storage: Storage, output_prefix: str) -> int:
    """Delete CSV / drift side files whose Parquet part was never committed (left by a killed batch)."""
    committed = set(committed_parts(storage, output_prefix))
    removed = 0
    for kind in ("csv", "_drift"):
        for info in storage.list(join_key(output_prefix, kind) + "/"):
            name = info.key.rsplit("/", 1)[-1]
            num = name.removeprefix("part-").split(".", 1)[0]
            if num.isdigit() and int(num) not in committed:
                storage.delete(info.key)
                removed += 1
    return removed
