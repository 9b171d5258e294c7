"""Processing end to end: generated dataset on the local store (quarantine, incremental reruns, local copy), the moto
server over HTTP (corrupt object quarantined), a slice of the real Fashion-MNIST; the validation split's properties."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from common.storage import LocalStorage, S3Storage
from data_ingestion import acquire, ingest
from data_ingestion.fashion_mnist import load_split as load_idx_split
from data_processing import build, process
from data_processing.dataset import load_split
from data_processing.split import stratified_split, val_count
from tests.support.data import item_image, jpeg_bytes, write_raw_dir


def test_split_is_stratified_deterministic_and_order_independent() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6000)
    keys = [f"raw/train/c{label}/{i}.png" for i, label in enumerate(labels)]
    train_idx, val_idx = stratified_split(keys, labels)
    assert len(val_idx) == 5000 and len(train_idx) == 55000
    assert np.bincount(labels[val_idx]).tolist() == [500] * 10
    assert not set(train_idx) & set(val_idx)
    perm = rng.permutation(len(keys))
    _, val_perm = stratified_split([keys[i] for i in perm], labels[perm])
    assert {keys[perm[i]] for i in val_perm} == {keys[i] for i in val_idx}  # same items whatever the order
    _, other_seed = stratified_split(keys, labels, seed=1)
    assert set(other_seed) != set(val_idx)


def test_split_is_stable_when_items_are_added() -> None:
    labels = np.repeat(np.arange(10), 1000)
    keys = [f"k{i}" for i in range(len(labels))]
    _, val = stratified_split(keys, labels, per_class=50)
    more_keys = keys + [f"new{i}" for i in range(100)]
    more_labels = np.concatenate([labels, np.repeat(np.arange(10), 10)])
    _, val2 = stratified_split(more_keys, more_labels, per_class=50)
    old, new = {keys[i] for i in val}, {more_keys[i] for i in val2}
    assert len(old - new) <= 10  # only items displaced by newcomers left validation


def test_val_count_caps_small_classes() -> None:
    assert val_count(6000) == 500
    assert val_count(20) == 2
    assert val_count(3) == 1 and val_count(1) == 0


def _raw_with_oddities(raw: Path) -> None:
    write_raw_dir(raw, {"train": 20, "test": 5})
    # A real photo: dark item on white, RGB, JPEG, larger than 28x28: must be decoded into the dataset.
    big = np.full((200, 140, 3), 250, np.uint8)
    big[30:170, 40:100] = 40
    (raw / "train/Coat/9000.jpg").write_bytes(jpeg_bytes(big))
    (raw / "train/Coat/9001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # undecodable
    (raw / "train/Coat/9002.gif").write_bytes(b"GIF89a....")  # not an allowed suffix: never ingested


def test_process_end_to_end_local(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    _raw_with_oddities(raw)
    assert ingest.main([]) == 0
    store = LocalStorage(tmp_path / "data" / "store")
    store.put_bytes("raw/train/Bag/170.png", b"tampered after ingest")  # sha256 no longer matches the manifest
    capsys.readouterr()

    assert process.main([]) == 0
    out = capsys.readouterr()
    # Bag lost one item to quarantine (19 -> 1 val at the 10% cap), Coat gained the JPEG (21 -> 2 val).
    assert "train 181, val 19, test 50, quarantined 2" in out.out
    report = {r["key"]: r for r in json.loads(store.get_bytes(build.QUARANTINE_KEY))}
    assert report["raw/train/Bag/170.png"]["code"] == "checksum_mismatch"
    assert report["raw/train/Coat/9001.png"]["code"] == "invalid_image"
    assert "raw/train/Coat/9001.png" in out.err

    splits = {name: load_split(store, name) for name in ("train", "val", "test")}
    assert np.bincount(splits["val"].labels, minlength=10).tolist() == [2, 2, 2, 2, 2, 2, 2, 2, 1, 2]
    assert not set(splits["train"].keys) & set(splits["val"].keys)
    all_keys = [*splits["train"].keys, *splits["val"].keys]
    i = all_keys.index("raw/train/Coat/9000.jpg")
    photo = np.concatenate([splits["train"].images, splits["val"].images])[i]
    assert photo[0, 0] < 20 and photo[14, 14] > 150  # light-on-dark after THE preprocessing
    j = list(splits["test"].keys).index("raw/test/Bag/42.png")
    np.testing.assert_array_equal(splits["test"].images[j], item_image(8, 42))  # exact pixels
    assert splits["test"].labels[j] == 8

    summary = json.loads(store.get_bytes(build.MANIFEST_KEY))
    assert summary["counts"]["val"]["per_class"]["Bag"] == 1 and summary["quarantined"] == 2
    assert summary["digests"]["test"] == splits["test"].digest()
    local = tmp_path / "data" / "processed"
    assert len(list((local / "test").glob("*.png"))) == 50
    assert (local / "test" / "8_42.png").is_file()  # <label>_<index>.png, the seed's naming

    # Nothing new: up to date, nothing rewritten.
    mtime = store.local_path("processed/train.npz").stat().st_mtime_ns
    assert process.main([]) == 0
    assert "up to date" in capsys.readouterr().out
    assert store.local_path("processed/train.npz").stat().st_mtime_ns == mtime

    # One new image: only it is downloaded and decoded; --strict reports the quarantined items with exit 4.
    (raw / "test/Bag/500.png").write_bytes((raw / "test/Bag/42.png").read_bytes())
    assert ingest.main([]) == 0
    capsys.readouterr()
    assert process.main(["--strict"]) == process.EXIT_QUARANTINED
    out = capsys.readouterr().out
    # The ingest rerun also repaired the tampered object (its content differed from the local file); the new image
    # and the two previously quarantined ones are the only items fetched again.
    assert "test 51, quarantined 1" in out and "decoded 3, reused 250" in out


def test_process_without_manifest_exits_3(tmp_path: Path, capsys) -> None:
    assert process.main(["--no-local-copy"]) == process.EXIT_NO_INPUT
    assert "(run ric ingest, or data_ingestion/ingest.py, first)" in capsys.readouterr().err


@pytest.mark.slow
def test_process_from_moto_server_quarantines_corrupt_object(moto_server: str, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "data" / "raw"
    write_raw_dir(raw, {"train": 10, "test": 3})
    uri = f"s3://proc-{uuid.uuid4().hex[:8]}/store"
    common = ["--storage-uri", uri, "--endpoint-url", moto_server]
    assert ingest.main(common) == 0
    capsys.readouterr()
    bucket = uri[5:].split("/")[0]
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").put_object(
        Bucket=bucket, Key="store/raw/train/Sandal/55.png", Body=b"corrupted in the bucket"
    )
    assert process.main([*common, "--no-local-copy"]) == 0
    assert "train 89, val 10, test 30, quarantined 1" in capsys.readouterr().out
    store = S3Storage(uri, endpoint_url=moto_server)
    report = json.loads(store.get_bytes(build.QUARANTINE_KEY))
    assert [(r["key"], r["code"]) for r in report] == [("raw/train/Sandal/55.png", "checksum_mismatch")]
    assert len(load_split(store, "test")) == 30
    assert process.main([*common, "--no-local-copy"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_real_fashion_mnist_slice(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    assert acquire.main(["--source-dir", str(fmnist_dir), "--limit-per-class", "30"]) == 0
    assert ingest.main([]) == 0
    assert process.main([]) == 0
    assert "train 270, val 30, test 300, quarantined 0" in capsys.readouterr().out
    store = LocalStorage(tmp_path / "data" / "store")
    x_test, y_test = load_idx_split("test", fmnist_dir, tmp_path)
    test = load_split(store, "test")
    idx = np.array([int(k.rsplit("/", 1)[1].removesuffix(".png")) for k in test.keys])
    np.testing.assert_array_equal(test.images, x_test[idx])  # original pixels, original labels
    np.testing.assert_array_equal(test.labels, y_test[idx])
    assert np.bincount(load_split(store, "val").labels).tolist() == [3] * 10


@pytest.mark.slow
def test_missing_bucket_is_a_clear_error(moto_server: str, capsys) -> None:
    uri = f"s3://absent-{uuid.uuid4().hex[:8]}/store"
    assert process.main(["--storage-uri", uri, "--endpoint-url", moto_server, "--no-local-copy"]) == 1
    err = capsys.readouterr().err
    bucket = uri.split("/")[2]
    assert err.count("\n") == 1 and err.startswith("ric process: error: ")  # one line, no traceback
    assert f"the bucket {bucket!r} of {uri} does not exist" in err and "STORAGE_URI" in err
