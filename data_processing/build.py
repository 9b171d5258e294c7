"""Build the training-ready dataset from the ingested raw images (library of ``data_processing/process.py``).

:func:`run` reads the manifest ``raw/manifest.jsonl``, downloads the objects concurrently (S3: threads; local store:
chunks in processes, as decoding is CPU-bound), verifies each one's SHA-256 against the manifest, decodes it with
THE preprocessing function (:func:`data_processing.preprocessing.preprocess_bytes`) and quarantines anything
missing, mismatched, unlabelled or undecodable with a reason (``processed/quarantine.json``). A deterministic
stratified validation split (:mod:`data_processing.split`) is carved from train; test is left alone. Outputs:
``processed/{train,val,test}.npz`` (:mod:`data_processing.dataset`), the quarantine list, a cache of decoded
items keyed by key + SHA-256, and, written last as the commit marker, ``processed/manifest.json``; optionally a
local PNG working copy. Incremental: unchanged inputs and parameters mean "up to date", new items only are decoded.
"""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common import parallel
from common.images import encode_png
from common.labels import CLASS_NAMES, NUM_CLASSES
from common.progress import progress_bar
from common.storage import (
    LocalStorage,
    ObjectNotFound,
    Storage,
    sha256_hex,
    write_if_changed,
)
from data_ingestion.manifest import MANIFEST_KEY as INPUT_MANIFEST_KEY
from data_ingestion.manifest import ManifestEntry, decode_manifest
from data_processing.dataset import SPLITS, Split, save_split, split_key
from data_processing.preprocessing import ImageError, preprocess_bytes
from data_processing.split import SEED, VAL_MAX_FRACTION, VAL_PER_CLASS, stratified_split

log = logging.getLogger(__name__)
PIPELINE_VERSION = 1  # bump when preprocessing or the output format changes, to force a full rebuild
MANIFEST_KEY = "processed/manifest.json"
QUARANTINE_KEY = "processed/quarantine.json"
CACHE_KEY = "processed/items.npz"
LOCAL_MARKER = "manifest.json"


@dataclass(frozen=True)
class Params:
    val_per_class: int = VAL_PER_CLASS
    val_max_fraction: float = VAL_MAX_FRACTION
    seed: int = SEED

    def as_dict(self) -> dict:
        return {"val_per_class": self.val_per_class, "val_max_fraction": self.val_max_fraction, "seed": self.seed,
                "pipeline_version": PIPELINE_VERSION}  # fmt: skip


@dataclass
class Decoded:
    entry: ManifestEntry
    image: np.ndarray | None = None
    reason: str = ""
    code: str = ""


def fingerprint(input_manifest: bytes, params: Params) -> str:
    """Identity of one processing job: the input manifest's bytes and every parameter that changes the output."""
    return sha256_hex(input_manifest + json.dumps(params.as_dict(), sort_keys=True).encode())


def check_entry(entry: ManifestEntry, data: bytes) -> Decoded:
    """Verify and decode one downloaded object (pure). Failures carry a reason for the quarantine report."""
    if sha256_hex(data) != entry.sha256:
        return Decoded(entry, reason=f"sha256 {sha256_hex(data)[:16]}... does not match the manifest's "
                       f"{entry.sha256[:16]}...", code="checksum_mismatch")  # fmt: skip
    if not isinstance(entry.label, int) or not 0 <= entry.label < NUM_CLASSES:
        return Decoded(entry, reason=f"no valid label ({entry.label!r})", code="no_label")
    if entry.split not in ("train", "test"):
        return Decoded(entry, reason=f"unknown split {entry.split!r} (expected train or test)", code="unknown_split")
    try:
        return Decoded(entry, image=preprocess_bytes(data))
    except ImageError as exc:
        return Decoded(entry, reason=str(exc), code=exc.code)


def fetch_and_check(storage: Storage, entry: ManifestEntry) -> Decoded:
    try:
        data = storage.get_bytes(entry.key)
    except ObjectNotFound:
        return Decoded(entry, reason="object is missing from the store", code="missing")
    except Exception as exc:  # a download that failed after botocore's retries: quarantine, go on
        return Decoded(entry, reason=f"download failed: {type(exc).__name__}: {exc}", code="download_failed")
    return check_entry(entry, data)


def _fetch_chunk(storage: Storage, entries: list[ManifestEntry]) -> list[Decoded]:
    return [fetch_and_check(storage, e) for e in entries]


def fetch_all(
    storage: Storage, entries: list[ManifestEntry], workers: int, *, min_parallel: int = parallel.MIN_ITEMS
) -> list[Decoded]:
    """Download, verify and decode ``entries`` (in order). S3: ``workers`` threads (network-bound). Local store:
    reading and PNG decoding are CPU-bound, so chunks run in up to ``workers`` processes (capped at the cores).
    A progress bar is drawn when stderr is a terminal."""
    out: list[Decoded] = []
    with progress_bar(len(entries), "process: decode") as bar:
        if isinstance(storage, LocalStorage):
            jobs = [(storage, list(chunk)) for chunk in parallel.chunks(entries)]
            for chunk in parallel.map_chunks(_fetch_chunk, jobs, workers=workers, items=len(entries),
                                             min_items=min_parallel):  # fmt: skip
                out.extend(chunk)
                bar.update(len(chunk))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for decoded in pool.map(lambda e: fetch_and_check(storage, e), entries):
                    out.append(decoded)
                    bar.update()
    return out


def load_cache(storage: Storage) -> dict[tuple[str, str], np.ndarray]:
    """Previously decoded images by (key, sha256); empty if absent or from another pipeline version."""
    try:
        with np.load(io.BytesIO(storage.get_bytes(CACHE_KEY)), allow_pickle=False) as npz:
            if int(npz["pipeline_version"]) != PIPELINE_VERSION:
                return {}
            return {(str(k), str(s)): img for k, s, img in zip(npz["keys"], npz["sha256"], npz["images"], strict=True)}
    except ObjectNotFound:
        return {}
    except Exception as exc:  # a damaged cache only costs time
        log.warning("ignoring unreadable %s: %s", CACHE_KEY, exc)
        return {}


def save_cache(storage: Storage, items: list[Decoded]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        keys=np.array([d.entry.key for d in items], dtype=str),
        sha256=np.array([d.entry.sha256 for d in items], dtype=str),
        images=np.stack([d.image for d in items]) if items else np.zeros((0, 28, 28), np.uint8),
        pipeline_version=np.array(PIPELINE_VERSION),
    )
    storage.put_bytes(CACHE_KEY, buf.getvalue(), content_type="application/octet-stream")


def build_splits(items: list[Decoded], params: Params) -> dict[str, Split]:
    """train/val/test from the decoded items (pure; items in key order give splits in key order)."""
    items = sorted(items, key=lambda d: d.entry.key)
    out: dict[str, Split] = {}
    by_split = {s: [d for d in items if d.entry.split == s] for s in ("train", "test")}

    def make(ds: list[Decoded]) -> Split:
        return Split(
            images=np.stack([d.image for d in ds]) if ds else np.zeros((0, 28, 28), np.uint8),
            labels=np.array([d.entry.label for d in ds], dtype=np.int64),
            keys=np.array([d.entry.key for d in ds], dtype=str),
        )

    train = by_split["train"]
    train_idx, val_idx = stratified_split(
        [d.entry.key for d in train],
        [d.entry.label for d in train],
        per_class=params.val_per_class,
        max_fraction=params.val_max_fraction,
        seed=params.seed,
    )
    out["train"] = make([train[i] for i in train_idx])
    out["val"] = make([train[i] for i in val_idx])
    out["test"] = make(by_split["test"])
    return out


def summarize(splits: dict[str, Split], quarantined: int, fp: str, input_sha: str, params: Params) -> dict:
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": fp,
        "input_manifest_key": INPUT_MANIFEST_KEY,
        "input_manifest_sha256": input_sha,
        "params": params.as_dict(),
        "counts": {
            name: {
                "total": len(s),
                "per_class": {CLASS_NAMES[c]: int(np.sum(s.labels == c)) for c in range(NUM_CLASSES)},
            }
            for name, s in splits.items()
        },
        "digests": {name: s.digest() for name, s in splits.items()},
        "quarantined": quarantined,
        "quarantine_report": QUARANTINE_KEY,
    }


def local_name(label: int, key: str) -> str:
    """``raw/train/Bag/17.png`` with label 8 -> ``8_17.png`` (the seed's naming: label, underscore, index)."""
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{label}_{stem}.png"


def _write_pngs(folder: Path, names: list[str], images: np.ndarray) -> int:
    return sum(write_if_changed(folder / name, encode_png(image)) for name, image in zip(names, images, strict=True))


def write_local_copy(
    local_dir: Path, splits: dict[str, Split], summary: dict, workers: int, *, min_parallel: int = parallel.MIN_ITEMS
) -> int:
    """Mirror the splits as PNGs for people; rewrites only changed files and removes stale ones. Returns written.

    PNG encoding is CPU-bound: chunks of images run in up to ``workers`` processes (capped at the cores). A progress
    bar is drawn when stderr is a terminal.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / LOCAL_MARKER).unlink(missing_ok=True)  # not up to date until the copy is complete
    jobs = []
    wanted: dict[str, set[str]] = {}
    for name, split in splits.items():
        folder = local_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        index = {
            local_name(int(lbl), str(key)): i for i, (lbl, key) in enumerate(zip(split.labels, split.keys, strict=True))
        }
        wanted[name] = set(index)
        for part in parallel.chunks(list(index.items())):
            jobs.append((folder, [fname for fname, _ in part], split.images[[i for _, i in part]]))
    total = sum(len(s) for s in splits.values())
    written = 0
    chunked = parallel.map_chunks(_write_pngs, jobs, workers=workers, items=total, min_items=min_parallel)
    with progress_bar(total, "process: local copy") as bar:
        for (_, names, _), n in zip(jobs, chunked, strict=True):
            written += n
            bar.update(len(names))
    for name in splits:
        for stale in (local_dir / name).glob("*.png"):
            if stale.name not in wanted[name]:
                stale.unlink()
    write_if_changed(local_dir / LOCAL_MARKER, json.dumps(summary, indent=2).encode())
    return written


def _fingerprint_of(data: bytes | None) -> str | None:
    try:
        return json.loads(data)["fingerprint"] if data else None
    except (ValueError, KeyError, TypeError):
        return None


def is_up_to_date(storage: Storage, fp: str, local_dir: Path | None) -> bool:
    try:
        stored = storage.get_bytes(MANIFEST_KEY)
    except ObjectNotFound:
        return False
    if _fingerprint_of(stored) != fp or not all(storage.exists(split_key(s)) for s in SPLITS):
        return False
    if local_dir is not None:
        marker = local_dir / LOCAL_MARKER
        return marker.is_file() and _fingerprint_of(marker.read_bytes()) == fp
    return True


@dataclass
class Result:
    up_to_date: bool
    counts: dict[str, int]
    quarantined: list[Decoded]
    decoded: int = 0
    reused: int = 0
    seconds: float = 0.0


def run(
    storage: Storage,
    *,
    local_dir: Path | None,
    params: Params = Params(),
    workers: int = 16,
    force: bool = False,
) -> Result:
    """The processing job. Raises ObjectNotFound / ValueError when the input manifest is missing / malformed."""
    t0 = time.perf_counter()
    manifest_bytes = storage.get_bytes(INPUT_MANIFEST_KEY)
    entries = decode_manifest(manifest_bytes)
    fp = fingerprint(manifest_bytes, params)
    if not force and is_up_to_date(storage, fp, local_dir):
        summary = json.loads(storage.get_bytes(MANIFEST_KEY))
        counts = {s: summary["counts"][s]["total"] for s in SPLITS}
        return Result(True, counts, [], seconds=time.perf_counter() - t0)

    cache = {} if force else load_cache(storage)
    todo = [e for e in entries if (e.key, e.sha256) not in cache]
    results = [Decoded(e, image=cache[(e.key, e.sha256)]) for e in entries if (e.key, e.sha256) in cache]
    log.info("%d items: %d from cache, %d to download and decode", len(entries), len(results), len(todo))
    results.extend(fetch_all(storage, todo, workers))
    good = [d for d in results if d.image is not None]
    bad = sorted((d for d in results if d.image is None), key=lambda d: d.entry.key)

    splits = build_splits(good, params)
    summary = summarize(splits, len(bad), fp, sha256_hex(manifest_bytes), params)
    report = [{"key": d.entry.key, "code": d.code, "reason": d.reason} for d in bad]
    # The npz objects are zlib-compressed, and zlib releases the GIL: compress and store them side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        saves = [pool.submit(save_split, storage, name, splits[name]) for name in SPLITS]
        if todo:
            saves.append(pool.submit(save_cache, storage, good))
        storage.put_bytes(QUARANTINE_KEY, json.dumps(report, indent=2).encode(), content_type="application/json")
        for fut in saves:
            fut.result()
    storage.put_bytes(MANIFEST_KEY, json.dumps(summary, indent=2).encode(), content_type="application/json")
    if local_dir is not None:
        write_local_copy(local_dir, splits, summary, workers)
    counts = {s: len(splits[s]) for s in SPLITS}
    return Result(False, counts, bad, decoded=len(todo), reused=len(entries) - len(todo),
                  seconds=time.perf_counter() - t0)  # fmt: skip
