"""Upload every image under ``<DATA_DIR>/raw`` (or ``--source``) to ``<STORAGE_URI>/raw/<same relative path>``.

Concurrent (S3: a thread pool of ``--workers``; local store: up to ``--workers`` processes, capped at the CPU
cores, each handling chunks of files), idempotent and resumable: the store is listed once (paginated) and an
object is skipped when its stored MD5/ETag (S3) or its content (local store) already matches the local file, so a
second run uploads nothing and a run killed half-way is completed by the next one (uploads are atomic per object,
keys are deterministic, so every object ends up present exactly once). Throttling (503 SlowDown) is retried by
botocore's ``standard`` mode; an item that still fails is retried once more at the end of the run.

Writes the manifest object ``raw/manifest.jsonl`` (one JSON object per line, sorted by key:
``key, size, sha256, label, split``; label is the class id from the ``<split>/<class_slug>/`` folders) and rewrites it
only when it changes. Prints a one-line summary; a progress bar when stderr is a terminal.

For S3 (``STORAGE_URI=s3://bucket/prefix``): with a custom endpoint (``AWS_ENDPOINT_URL``: moto, MinIO, ...) a missing
bucket is created; against AWS itself the bucket must exist (``--create-bucket`` to create it anyway).

Usage: python data_ingestion/ingest.py [--source DIR] [--storage-uri URI] [--workers N] [--create-bucket]

Exit codes: 0 every image is in the store; 1 some uploads failed (listed on stderr); 2 bad arguments;
3 the source folder is missing or holds no images.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from common import parallel
from common.cli import read_settings
from common.labels import SLUG_TO_LABEL
from common.logging import setup_logging
from common.progress import progress_bar
from common.settings import Settings
from common.storage import (
    LocalStorage,
    ObjectInfo,
    ObjectNotFound,
    S3Storage,
    Storage,
    is_storage_error,
    join_key,
    md5_hex,
    sha256_hex,
)
from common.storage import open_storage as _open_storage
from data_ingestion.manifest import MANIFEST_KEY, RAW_PREFIX, ManifestEntry, decode_manifest, encode_manifest

log = logging.getLogger("ingest")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp"}  # fmt: skip


@dataclass
class Outcome:
    entry: ManifestEntry | None
    status: str  # uploaded | skipped | failed
    path: Path
    error: str = ""


def find_images(source: Path) -> list[Path]:
    """Every image file under ``source`` (by suffix), sorted; temporary files are ignored."""
    found: list[Path] = []

    def walk(folder: str) -> None:
        # scandir's d_type answers is_dir/is_file without a stat per file (rglob + is_file stat-ed all 70,000).
        try:
            it = os.scandir(folder)
        except PermissionError:  # as rglob: an unreadable folder is skipped
            return
        with it:
            for entry in it:
                if entry.is_dir():
                    if not entry.is_symlink():  # as rglob: symlinked folders are not followed
                        walk(entry.path)
                elif (
                    not entry.name.startswith(".")
                    and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
                    and entry.is_file()
                ):
                    found.append(Path(entry.path))

    if source.is_dir():
        walk(str(source))
    return sorted(found)


def label_and_split(rel_path: str) -> tuple[int | None, str | None]:
    """``train/Bag/17.png`` -> (8, "train"); paths outside the ``<split>/<class_slug>/`` layout give Nones."""
    parts = rel_path.split("/")
    if len(parts) >= 3:
        return SLUG_TO_LABEL.get(parts[-2]), parts[0]
    return None, None


def already_stored(storage: Storage, info: ObjectInfo | None, key: str, data: bytes) -> bool:
    """Is ``data`` already the object at ``key``? Uses the listing's MD5 when the store gives one."""
    if info is None or info.size != len(data):
        return False
    if info.md5 is not None:
        return info.md5 == md5_hex(data)
    if isinstance(storage, LocalStorage):
        try:
            return storage.local_path(key).read_bytes() == data
        except FileNotFoundError:
            return False
    try:  # e.g. multipart ETags: fall back to comparing the content
        return storage.get_bytes(key) == data
    except ObjectNotFound:
        return False


def _ingest_one(storage: Storage, source: Path, path: Path, existing: dict[str, ObjectInfo]) -> Outcome:
    rel = path.relative_to(source).as_posix()
    key = _key_of(source, path)
    try:
        data = path.read_bytes()
        label, split = label_and_split(rel)
        entry = ManifestEntry(key, len(data), sha256_hex(data), label, split)
        if already_stored(storage, existing.get(key), key, data):
            return Outcome(entry, "skipped", path)
        storage.put_bytes(key, data, content_type=CONTENT_TYPES.get(path.suffix.lower()))
        return Outcome(entry, "uploaded", path)
    except Exception as exc:  # one bad file or a give-up after retries must not stop the run
        return Outcome(None, "failed", path, f"{type(exc).__name__}: {exc}")


def _ingest_chunk(storage: Storage, source: Path, paths: list[Path], existing: dict[str, ObjectInfo]) -> list[Outcome]:
    return [_ingest_one(storage, source, p, existing) for p in paths]


def _key_of(source: Path, path: Path) -> str:
    return join_key(RAW_PREFIX, path.relative_to(source).as_posix())


def ingest(
    storage: Storage,
    source: Path,
    workers: int = 16,
    *,
    min_parallel: int = parallel.MIN_ITEMS,
) -> tuple[list[Outcome], bool]:
    """Upload all images under ``source``; write the manifest. Returns (outcomes, manifest_written).

    S3: ``workers`` threads, one object each (the time is spent waiting on the network). Local store: the work is
    file-system calls and hashing, bound by CPU and the GIL, so chunks of files run in up to ``workers`` processes
    (capped at the cores; in this process below ``min_parallel`` files). A progress bar is drawn when stderr is a
    terminal.
    """
    paths = find_images(source)
    existing = {info.key: info for info in storage.list(RAW_PREFIX + "/")}
    outcomes: list[Outcome] = []
    with progress_bar(len(paths), "ingest") as bar:
        if isinstance(storage, LocalStorage):
            jobs = []
            for chunk in parallel.chunks(paths):
                keys = (_key_of(source, p) for p in chunk)
                known = {k: existing[k] for k in keys if k in existing}  # only what the chunk needs is pickled
                jobs.append((storage, source, list(chunk), known))
            for chunk_outcomes in parallel.map_chunks(
                _ingest_chunk, jobs, workers=workers, items=len(paths), min_items=min_parallel
            ):
                outcomes.extend(chunk_outcomes)
                bar.update(len(chunk_outcomes))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_ingest_one, storage, source, p, existing) for p in paths]
                for fut in as_completed(futures):
                    outcomes.append(fut.result())
                    bar.update()
    # A last, sequential chance for items that failed (e.g. retry quota exhausted during a throttling storm).
    for i, o in enumerate(outcomes):
        if o.status == "failed":
            log.warning("retrying %s after: %s", o.path, o.error)
            outcomes[i] = _ingest_one(storage, source, o.path, {})
    return outcomes, write_manifest(storage, outcomes, existing)


def write_manifest(storage: Storage, outcomes: list[Outcome], existing: dict[str, ObjectInfo]) -> bool:
    """Merge this run's entries into the stored manifest (entries of objects still in the store are kept)."""
    entries = {o.entry.key: o.entry for o in outcomes if o.entry is not None and o.status != "failed"}
    try:
        old_bytes = storage.get_bytes(MANIFEST_KEY)
    except ObjectNotFound:
        old_bytes = b""
    try:
        for e in decode_manifest(old_bytes):
            if e.key not in entries and e.key in existing:
                entries[e.key] = e
    except ValueError as exc:
        log.warning("replacing an unreadable manifest: %s", exc)
    new_bytes = encode_manifest(entries.values())
    if new_bytes == old_bytes:
        return False
    storage.put_bytes(MANIFEST_KEY, new_bytes, content_type="application/x-ndjson")
    return True


def open_store(settings: Settings, workers: int, create_bucket: bool | None) -> Storage:
    storage = _open_storage(
        settings.storage_uri, endpoint_url=settings.aws_endpoint_url, max_pool_connections=max(workers, 10)
    )
    if isinstance(storage, S3Storage) and (create_bucket or (create_bucket is None and settings.aws_endpoint_url)):
        storage.ensure_bucket()
    return storage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="folder of images to upload (default <DATA_DIR>/raw)")
    p.add_argument("--storage-uri", help="override STORAGE_URI (a folder or s3://bucket/prefix)")
    p.add_argument("--endpoint-url", help="override AWS_ENDPOINT_URL (S3-compatible endpoint)")
    p.add_argument("--data-dir", type=Path, help="override DATA_DIR")
    p.add_argument("--workers", type=int, default=16,
                   help="concurrent S3 uploads; local store: processes, capped at the cores (default 16)")  # fmt: skip
    p.add_argument("--create-bucket", action="store_true", default=None,
                   help="create the S3 bucket if missing (default: only with a custom AWS_ENDPOINT_URL)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (env := read_settings("ingest")) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    if args.workers < 1:
        print("ingest: --workers must be >= 1", file=sys.stderr)
        return 2
    settings = env.with_overrides(
        data_dir=args.data_dir, storage_uri=args.storage_uri, aws_endpoint_url=args.endpoint_url
    )
    source = args.source or Path(settings.data_dir) / "raw"
    if not source.is_dir() or not find_images(source):
        print(f"ingest: no images under {source} (run data_ingestion/acquire.py first)", file=sys.stderr)
        return 3
    t0 = time.perf_counter()
    try:
        storage = open_store(settings, args.workers, args.create_bucket)
        outcomes, manifest_written = ingest(storage, source, args.workers)
    except Exception as exc:  # the store itself is unreachable/missing: one clear line, not a traceback
        if is_storage_error(exc):
            print(f"ingest: cannot use the store {settings.storage_uri}: {exc}", file=sys.stderr)
            return 1
        raise
    secs = time.perf_counter() - t0
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("uploaded", "skipped", "failed")}
    print(
        f"ingest: uploaded {counts['uploaded']}, skipped {counts['skipped']}, failed {counts['failed']} "
        f"of {len(outcomes)} images in {secs:.1f} s ({len(outcomes) / max(secs, 1e-9):,.0f} images/s) "
        f"-> {storage.uri}/{RAW_PREFIX} (manifest {'written' if manifest_written else 'unchanged'})"
    )
    if counts["failed"]:
        print("ingest: these files were NOT uploaded (rerun to retry):", file=sys.stderr)
        for o in sorted((o for o in outcomes if o.status == "failed"), key=lambda o: str(o.path)):
            print(f"  {o.path}: {o.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
