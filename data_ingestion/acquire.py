"""Fill ``<DATA_DIR>/raw`` with the labelled Fashion-MNIST images, one PNG per item, as returned-item photos arrive.

Writes ``raw/{train,test}/<class_slug>/<index>.png`` (``index`` = position in the original split) and
``raw/labels.csv`` (path,label,class_name,split,index,sha256). The four IDX files come from ``--source-dir``
(default ``FASHION_MNIST_DIR``) or are downloaded from Zalando (GitHub mirror as fallback) into
``<DATA_DIR>/downloads`` and verified against the published checksums first.

Immutable and idempotent: a file whose bytes are already correct is not rewritten; a rerun prints "written 0".

Usage: python data_ingestion/acquire.py [--source-dir DIR] [--out DIR] [--limit-per-class N] [--workers N]

Exit codes: 0 success; 1 a source file failed its checksum or is malformed (nothing written); 2 bad arguments;
3 source files missing or download failed (offline: the message says how to use a local copy; nothing written).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import parallel
from common.cli import read_settings
from common.images import encode_png
from common.labels import CLASS_NAMES, class_slug
from common.logging import setup_logging
from common.progress import progress_bar
from common.storage import sha256_hex, write_if_changed
from data_ingestion.fashion_mnist import BASE_URLS, ChecksumError, DownloadError, IdxFormatError, load_fashion_mnist

log = logging.getLogger("acquire")
LABELS_CSV = "labels.csv"
CSV_FIELDS = ("path", "label", "class_name", "split", "index", "sha256")
DEBIAN_PACKAGE, DEBIAN_DIR = "dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"
# Said when no download source answers: `make demo` on a machine without internet ends here.
OFFLINE_HINT = (
    "no network? Use a local copy of the four IDX .gz files instead: set FASHION_MNIST_DIR (or --source-dir) to "
    f"their folder. Debian packages them: apt-get install {DEBIAN_PACKAGE}, then "
    f"export FASHION_MNIST_DIR={DEBIAN_DIR} (its re-compressed files pass the checksum check)."
)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-dir", type=Path, help="folder holding the 4 IDX .gz files (default FASHION_MNIST_DIR; "
                   "if unset, download into <DATA_DIR>/downloads)")  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default <DATA_DIR>/raw)")
    p.add_argument("--data-dir", type=Path, help="override DATA_DIR")
    p.add_argument("--download-url", action="append", metavar="URL",
                   help="base URL to download the IDX files from, e.g. a mirror (repeatable, tried in order; "
                   "default Zalando's, then GitHub's)")  # fmt: skip
    p.add_argument("--limit-per-class", type=int, help="export only the first N images of each class per split")
    p.add_argument("--workers", type=int, default=4, help="PNG encoder processes, capped at the CPU cores (default 4)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (env := read_settings("acquire")) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    if args.limit_per_class is not None and args.limit_per_class < 1:
        print("acquire: --limit-per-class must be >= 1", file=sys.stderr)
        return 2
    settings = env.with_overrides(data_dir=args.data_dir, fashion_mnist_dir=args.source_dir)
    out = args.out or Path(settings.data_dir) / "raw"
    t0 = time.perf_counter()
    try:
        train_x, train_y, test_x, test_y = load_fashion_mnist(
            settings.fashion_mnist_dir, Path(settings.data_dir) / "downloads", args.download_url or BASE_URLS
        )
    except (ChecksumError, IdxFormatError) as exc:
        print(f"acquire: refused: {exc}", file=sys.stderr)
        return 1
    except DownloadError as exc:
        print(f"acquire: {exc}\nacquire: {OFFLINE_HINT}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ConnectionError) as exc:
        print(f"acquire: {exc}", file=sys.stderr)
        return 3
    written, unchanged = export(
        out, {"train": (train_x, train_y), "test": (test_x, test_y)}, args.limit_per_class, max(1, args.workers)
    )
    secs = time.perf_counter() - t0
    print(f"acquire: {written + unchanged} images in {out} (written {written}, unchanged {unchanged}) in {secs:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
