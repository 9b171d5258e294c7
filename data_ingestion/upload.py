"""Upload a folder of images to ``<store>/raw/<same relative path>`` and keep its manifest (library of
``data_ingestion/ingest.py``).

Concurrent (S3: a thread pool; local store: chunks of files in up to ``workers`` processes, capped at the cores),
idempotent and resumable: the store is listed once (paginated) and an object is skipped when its stored MD5/ETag
(S3) or its content (local store) already matches the local file, so a second run uploads nothing and a run
killed half-way is completed by the next one (uploads are atomic per object, keys are deterministic). Throttling
(503 SlowDown) is retried by botocore's ``standard`` mode; an item that still fails is retried once more at the
end. The manifest ``raw/manifest.jsonl`` (:mod:`data_ingestion.manifest`) is rewritten only when it changes.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from common import parallel
from common.labels import SLUG_TO_LABEL
from common.progress import progress_bar
from common.storage import LocalStorage, ObjectInfo, ObjectNotFound, Storage, join_key, md5_hex, sha256_hex
from data_ingestion.manifest import MANIFEST_KEY, RAW_PREFIX, ManifestEntry, decode_manifest, encode_manifest

log = logging.getLogger(__name__)
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
