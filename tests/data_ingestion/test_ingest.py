"""Ingestion: local store (idempotence, resume after a kill, failures) and a real moto server over HTTP (> 1,000
keys, rerun uploads 0 objects counted at the wire, 503 SlowDown injected on a share of uploads)."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest

from common.storage import LocalStorage, S3Storage, sha256_hex
from data_ingestion import ingest
from data_ingestion.manifest import MANIFEST_KEY, ManifestEntry, decode_manifest, encode_manifest
from data_ingestion.upload import label_and_split
from tests.support.data import FaultProxy, write_raw_dir


def run_ingest(*args: str) -> int:
    return ingest.main(list(args))


def test_label_and_split_from_path() -> None:
    assert label_and_split("train/Bag/17.png") == (8, "train")
    assert label_and_split("test/T-shirt_top/3.png") == (0, "test")
    assert label_and_split("misc/photo.png") == (None, None)
    assert label_and_split("train/NotAClass/1.png") == (None, "train")


def test_manifest_round_trips_sorted_and_names_a_malformed_line() -> None:
    entries = [
        ManifestEntry("raw/test/Bag/2.png", 70, "b" * 64, 8, "test"),
        ManifestEntry("misc/x.png", 9, "a" * 64, None, None),
    ]
    data = encode_manifest(entries)
    assert decode_manifest(data) == sorted(entries, key=lambda e: e.key)
    assert encode_manifest([]) == b"" and decode_manifest(b"") == []
    with pytest.raises(ValueError, match="line 3"):
        decode_manifest(data + b'{"key": "raw/y.png"}\n')


def test_local_ingest_is_idempotent_and_writes_manifest(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    files = write_raw_dir(raw, {"train": 2, "test": 1})
    (raw / "labels.csv").write_text("not an image\n")
    assert run_ingest() == 0
    out = capsys.readouterr().out
    assert "uploaded 30, skipped 0, failed 0 of 30 images" in out and "images/s" in out
    store = LocalStorage(tmp_path / "data" / "store")
    entries = {e.key: e for e in decode_manifest(store.get_bytes(MANIFEST_KEY))}
    assert set(entries) == {f"raw/{p}" for p in files}
    e = entries["raw/train/Bag/16.png"]
    assert e.label == 8 and e.split == "train" and e.sha256 == sha256_hex((raw / "train/Bag/16.png").read_bytes())
    assert store.get_bytes("raw/train/Bag/16.png") == (raw / "train/Bag/16.png").read_bytes()
    assert not store.exists("raw/labels.csv")

    before = {o.key: store.local_path(o.key).stat().st_mtime_ns for o in store.list("raw/")}
    assert run_ingest() == 0
    assert "uploaded 0, skipped 30, failed 0" in capsys.readouterr().out
    after = {o.key: store.local_path(o.key).stat().st_mtime_ns for o in store.list("raw/")}
    assert after == before  # nothing rewritten, manifest included

    (raw / "train/Bag/16.png").write_bytes(b"changed content")  # a changed file is uploaded again
    assert run_ingest() == 0
    assert "uploaded 1, skipped 29" in capsys.readouterr().out
    assert store.get_bytes("raw/train/Bag/16.png") == b"changed content"
    assert decode_manifest(store.get_bytes(MANIFEST_KEY))[0].key < "raw/train"  # sorted by key


def test_a_run_killed_half_way_is_completed(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    files = write_raw_dir(raw, {"train": 3})
    store = LocalStorage(tmp_path / "data" / "store")
    done = sorted(files)[:11]  # what the killed run managed to upload (objects are atomic), no manifest yet
    for rel in done:
        store.put_bytes(f"raw/{rel}", (raw / rel).read_bytes())
    (store.root / "raw" / ".tmp-dead-x.png").write_bytes(b"half")  # the write in flight when it died
    assert run_ingest() == 0
    assert "uploaded 19, skipped 11, failed 0 of 30" in capsys.readouterr().out
    keys = [o.key for o in store.list("raw/") if o.key != MANIFEST_KEY]
    assert keys == sorted(f"raw/{p}" for p in files)  # every object exactly once
    assert len(decode_manifest(store.get_bytes(MANIFEST_KEY))) == 30


class FailingStore(LocalStorage):
    """A store whose uploads of one key always fail (a hand-written fake)."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        if key.endswith("/Bag/16.png"):
            raise ConnectionError("simulated network failure")
        super().put_bytes(key, data, content_type=content_type)


def test_failures_exit_non_zero_and_are_listed(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "data" / "raw"
    write_raw_dir(raw, {"train": 2})
    monkeypatch.setattr(ingest, "storage_from_settings", lambda settings, **kw: FailingStore(settings.storage_uri))
    assert run_ingest() == 1
    captured = capsys.readouterr()
    assert "uploaded 19, skipped 0, failed 1 of 20" in captured.out
    assert "Bag/16.png" in captured.err and "simulated network failure" in captured.err
    store = LocalStorage(tmp_path / "data" / "store")
    keys = {e.key for e in decode_manifest(store.get_bytes(MANIFEST_KEY))}
    assert len(keys) == 19 and "raw/train/Bag/16.png" not in keys  # the manifest lists only stored objects


def test_missing_source_exits_3(tmp_path: Path, capsys) -> None:
    assert run_ingest("--source", str(tmp_path / "nope")) == 3
    assert "no images" in capsys.readouterr().err


def _bucket_keys(endpoint: str, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_moto_server_over_1000_keys_rerun_puts_nothing(moto_server: str, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    files = write_raw_dir(raw, {"train": 96, "test": 10})  # 1,060 images
    bucket = f"ingest-{uuid.uuid4().hex[:8]}"  # does not exist yet: created because the endpoint is custom
    with FaultProxy(moto_server) as proxy:
        args = ("--storage-uri", f"s3://{bucket}/store", "--endpoint-url", proxy.url, "--workers", "8")
        assert run_ingest(*args) == 0
        assert "uploaded 1060, skipped 0, failed 0" in capsys.readouterr().out
        assert proxy.counts["PUT"] == 1060 + 1 + 1  # objects, manifest, CreateBucket
        proxy.reset()
        assert run_ingest(*args) == 0
        assert "uploaded 0, skipped 1060, failed 0" in capsys.readouterr().out
        assert proxy.counts["PUT"] == 0  # counted at the wire
        assert proxy.counts["GET"] >= 2  # the paginated listing (> 1,000 keys) and the manifest
    keys = _bucket_keys(moto_server, bucket)
    assert sorted(keys) == sorted([f"store/raw/{p}" for p in files] + [f"store/{MANIFEST_KEY}"])
    store = S3Storage(f"s3://{bucket}/store", endpoint_url=moto_server)
    assert store.get_bytes("raw/test/Bag/85.png") == (raw / "test/Bag/85.png").read_bytes()


@pytest.mark.slow
def test_moto_server_slowdown_is_retried(moto_server: str, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    files = write_raw_dir(raw, {"train": 15})
    bucket = f"slow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    with FaultProxy(moto_server, slowdown_share=0.15, seed=3) as proxy:
        args = ("--storage-uri", f"s3://{bucket}/store", "--endpoint-url", proxy.url, "--workers", "8")
        assert run_ingest(*args) == 0
        assert "uploaded 150, skipped 0, failed 0" in capsys.readouterr().out
        assert proxy.injected >= 5  # throttled for real, and botocore retried every one
        assert proxy.counts["PUT"] == 151 + proxy.injected
    store = S3Storage(f"s3://{bucket}/store", endpoint_url=moto_server)
    for rel in files:
        assert store.get_bytes(f"raw/{rel}") == (raw / rel).read_bytes()
