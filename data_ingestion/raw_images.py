"""Write Fashion-MNIST arrays as the raw image folder, one PNG per item (library of ``data_ingestion/acquire.py``).

``<out>/{train,test}/<class_slug>/<index>.png`` (``index`` = position in the original split) and
``<out>/labels.csv`` (path,label,class_name,split,index,sha256). Immutable and idempotent: a file whose bytes are
already correct is not rewritten.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import parallel
from common.images import encode_png
from common.labels import CLASS_NAMES, class_slug
from common.progress import progress_bar
from common.storage import sha256_hex, write_if_changed

log = logging.getLogger(__name__)
LABELS_CSV = "labels.csv"
CSV_FIELDS = ("path", "label", "class_name", "split", "index", "sha256")


@dataclass(frozen=True)
class Item:
    split: str
    index: int
    label: int

    @property
    def rel_path(self) -> str:
        return f"{self.split}/{class_slug(self.label)}/{self.index}.png"


def select_indices(labels: np.ndarray, limit_per_class: int | None) -> np.ndarray:
    """Indices to export: all, or the first ``limit_per_class`` of each class in original order (pure)."""
    if limit_per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:limit_per_class] for c in range(len(CLASS_NAMES))]
    return np.sort(np.concatenate(keep))


def _export_chunk(out: Path, split: str, images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> list[tuple]:
    """Encode and write one chunk; ``images``/``labels`` are the chunk's rows (``idx`` their original indices)."""
    rows = []
    for image, label, i in zip(images, labels, idx, strict=True):
        item = Item(split, int(i), int(label))
        png = encode_png(image)
        written = write_if_changed(out / item.rel_path, png)
        rows.append((item, sha256_hex(png), written))
    return rows


def export(
    out: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    limit_per_class: int | None = None,
    workers: int = 4,
    *,
    min_parallel: int = parallel.MIN_ITEMS,
) -> tuple[int, int]:
    """Write the PNGs and labels.csv under ``out``; returns (written, unchanged).

    PNG encoding is CPU-bound: chunks of 1,000 images run in up to ``workers`` processes (capped at the cores), or
    in this process for fewer than ``min_parallel`` images. A progress bar is drawn when stderr is a terminal.
    """
    jobs = []
    for split, (images, labels) in splits.items():
        for chunk in parallel.chunks(select_indices(labels, limit_per_class)):
            jobs.append((out, split, images[chunk], labels[chunk], chunk))
            for label in np.unique(labels[chunk]):
                (out / split / class_slug(int(label))).mkdir(parents=True, exist_ok=True)
    total = sum(len(job[-1]) for job in jobs)
    rows: list[tuple] = []
    chunked = parallel.map_chunks(_export_chunk, jobs, workers=workers, items=total, min_items=min_parallel)
    with progress_bar(total, "acquire") as bar:
        for chunk_rows in chunked:
            rows.extend(chunk_rows)
            bar.update(len(chunk_rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for item, digest, _ in rows:
        writer.writerow((item.rel_path, item.label, CLASS_NAMES[item.label], item.split, item.index, digest))
    written = sum(1 for *_, w in rows if w)
    write_if_changed(out / LABELS_CSV, buf.getvalue().encode())
    return written, len(rows) - written
