"""The process-pool paths of acquire, ingest and process (used for large local jobs) give exactly the outputs of the
in-process path: same files, same bytes, same manifests, same decoded images and quarantine reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import parallel
from common.parallel import chunks, map_chunks, process_count
from common.storage import LocalStorage, sha256_hex
from data_ingestion import raw_images, upload
from data_ingestion.manifest import MANIFEST_KEY, decode_manifest
from data_processing import build
from data_processing.dataset import Split
from tests.support.data import item_image, write_raw_dir

FORCE = {"workers": 2, "min_parallel": 0}  # a pool even for a handful of items
INLINE = {"workers": 1}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_chunks_and_map_chunks_keep_order() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks([], 3) == []
    jobs = [(bytes([i]) * 100,) for i in range(5)]
    expected = [sha256_hex(j[0]) for j in jobs]
    assert list(map_chunks(sha256_hex, jobs, workers=2, items=5, min_items=0)) == expected
    assert list(map_chunks(sha256_hex, jobs, workers=1, items=5, min_items=0)) == expected
    assert 1 <= process_count(64) <= 64 and process_count(1) == 1


def test_acquire_export_in_processes_writes_the_same_bytes(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)
    images = np.stack([item_image(int(lbl), i) for i, lbl in enumerate(labels)])
    splits = {"train": (images, labels), "test": (images[::-1].copy(), labels[::-1].copy())}
    assert raw_images.export(tmp_path / "a", splits, None, **INLINE) == (100, 0)
    assert raw_images.export(tmp_path / "b", splits, None, **FORCE) == (100, 0)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert raw_images.export(tmp_path / "b", splits, None, **FORCE) == (0, 100)  # idempotent in processes too


def test_ingest_in_processes_gives_the_same_store_and_manifest(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw_dir(raw, {"train": 3, "test": 2})
    inline, pooled = LocalStorage(tmp_path / "s1"), LocalStorage(tmp_path / "s2")
    outcomes, written = upload.ingest(inline, raw, **INLINE)
    assert written and {o.status for o in outcomes} == {"uploaded"}
    outcomes, written = upload.ingest(pooled, raw, **FORCE)
    assert written and len(outcomes) == 50 and {o.status for o in outcomes} == {"uploaded"}
    assert _tree(inline.root) == _tree(pooled.root)
    pooled.put_bytes("raw/train/Bag/24.png", b"damaged")  # repaired by the rerun: the content differs
    outcomes, written = upload.ingest(pooled, raw, **FORCE)
    assert not written and sorted(o.status for o in outcomes) == ["skipped"] * 49 + ["uploaded"]
    assert _tree(inline.root) == _tree(pooled.root)
    assert len(decode_manifest(pooled.get_bytes(MANIFEST_KEY))) == 50


def test_process_decode_and_local_copy_in_processes_match_inline(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw_dir(raw, {"train": 2, "test": 1})
    store = LocalStorage(tmp_path / "store")
    upload.ingest(store, raw, **INLINE)
    store.put_bytes("raw/train/Coat/8.png", b"tampered")  # checksum mismatch -> quarantined either way
    store.delete("raw/test/Bag/8.png")  # missing -> quarantined either way
    entries = decode_manifest(store.get_bytes(MANIFEST_KEY))
    inline = build.fetch_all(store, entries, 1)
    pooled = build.fetch_all(store, entries, 2, min_parallel=0)
    assert [d.entry for d in pooled] == entries == [d.entry for d in inline]
    assert [(d.code, d.reason) for d in pooled] == [(d.code, d.reason) for d in inline]
    assert {d.code for d in pooled} == {"", "checksum_mismatch", "missing"}
    for a, b in zip(inline, pooled, strict=True):
        assert (a.image is None and b.image is None) or np.array_equal(a.image, b.image)

    def split_of(name: str) -> Split:
        ds = [d for d in pooled if d.image is not None and d.entry.split == name]
        return Split(np.stack([d.image for d in ds]), np.array([d.entry.label for d in ds], np.int64),
                     np.array([d.entry.key for d in ds]))  # fmt: skip

    splits = {"train": split_of("train"), "val": split_of("train"), "test": split_of("test")}
    n = sum(len(s) for s in splits.values())
    assert (
        build.write_local_copy(tmp_path / "l1", splits, {"fingerprint": "x"}, 1) == n == 19 + 19 + 9
    )  # one train and one test item quarantined
    stale = tmp_path / "l2" / "val" / "9_9999.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an older run")
    assert build.write_local_copy(tmp_path / "l2", splits, {"fingerprint": "x"}, 2, min_parallel=0) == n
    assert _tree(tmp_path / "l1") == _tree(tmp_path / "l2")  # same PNG bytes, and the stale file is gone
    assert build.write_local_copy(tmp_path / "l2", splits, {"fingerprint": "x"}, 2, min_parallel=0) == 0
    assert parallel.MIN_ITEMS > 100  # the tests above had to force the pool: small jobs stay in-process
