"""IDX parsing, checksum verification (incl. a re-compressed copy) and the acquire command on the real files."""

from __future__ import annotations

import gzip
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from common.labels import CLASS_NAMES, class_slug
from data_ingestion import acquire, fashion_mnist
from data_ingestion.fashion_mnist import FILES, ChecksumError, IdxFormatError, parse_idx, verify
from data_processing.preprocessing import preprocess_bytes

LABELS = "t10k-labels-idx1-ubyte.gz"


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_parse_idx_round_trips_images_and_labels() -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(imgs), (2, 3, 4)), imgs)
    labels = np.array([3, 1, 4], np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "shorter"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "magic"),
        (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4, "data type"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "header truncated"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 4, "payload"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 6, "payload"),
    ],
)
def test_parse_idx_rejects_malformed(data: bytes, match: str) -> None:
    with pytest.raises(IdxFormatError, match=match):
        parse_idx(data)


def test_parse_idx_rejects_wrong_shape() -> None:
    with pytest.raises(IdxFormatError, match="expected"):
        parse_idx(idx_bytes(np.zeros((3, 28, 27), np.uint8)), (3, 28, 28))


def test_verify_accepts_original_and_recompressed_copy(fmnist_dir: Path) -> None:
    original = (fmnist_dir / LABELS).read_bytes()
    raw = verify(FILES[LABELS], original)
    assert len(raw) == 10008 and raw[:4] == b"\x00\x00\x08\x01"
    recompressed = gzip.compress(raw, compresslevel=1, mtime=0)  # like Debian's package: different .gz bytes
    assert recompressed != original
    assert verify(FILES[LABELS], recompressed) == raw


def test_verify_refuses_tampered_content(fmnist_dir: Path) -> None:
    raw = bytearray(gzip.decompress((fmnist_dir / LABELS).read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        verify(FILES[LABELS], gzip.compress(bytes(raw)))
    with pytest.raises(ChecksumError, match="not a valid gzip"):
        verify(FILES[LABELS], b"this is not gzip")


def test_download_verifies_before_writing(tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = (fmnist_dir / LABELS).read_bytes()
    served: list[str] = []

    def fake_download(url: str, timeout: float = 0) -> bytes:  # the network, replaced by a byte source
        served.append(url)
        return good[:-10] + b"0123456789"

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    cache = tmp_path / "downloads"
    with pytest.raises(ChecksumError):
        fashion_mnist.fetch(FILES[LABELS], None, cache)
    assert not cache.exists() or not any(cache.iterdir())  # nothing written
    assert served[0].startswith(fashion_mnist.BASE_URLS[0])

    def flaky_then_good(url: str, timeout: float = 0) -> bytes:
        if url.startswith(fashion_mnist.BASE_URLS[0]):
            raise ConnectionError("primary down")
        return good

    monkeypatch.setattr(fashion_mnist, "_download", flaky_then_good)
    assert fashion_mnist.fetch(FILES[LABELS], None, cache) == gzip.decompress(good)
    assert (cache / LABELS).read_bytes() == good
    assert [p.name for p in cache.iterdir()] == [LABELS]  # no temporary files left


def test_load_real_test_split(fmnist_dir: Path, tmp_path: Path) -> None:
    x, y = fashion_mnist.load_split("test", fmnist_dir, tmp_path)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert abs(float(x.mean()) - 73.1466) < 1e-3  # the published sanity value


def test_acquire_writes_pngs_and_is_idempotent(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "raw"
    args = ["--source-dir", str(fmnist_dir), "--out", str(out), "--limit-per-class", "3"]
    assert acquire.main(args) == 0
    assert "written 60, unchanged 0" in capsys.readouterr().out
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 60
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "path,label,class_name,split,index,sha256" and len(rows) == 61
    x, y = fashion_mnist.load_split("train", fmnist_dir, tmp_path)
    path, label, name, split, index, _ = rows[1].split(",")
    assert split == "train" and int(label) == y[int(index)] and name == CLASS_NAMES[int(label)]
    assert path == f"train/{class_slug(int(label))}/{index}.png"
    np.testing.assert_array_equal(preprocess_bytes((out / path).read_bytes()), x[int(index)])

    victim = out / path
    victim.write_bytes(b"damaged")
    untouched = pngs[-1].stat().st_mtime_ns
    assert acquire.main(args) == 0
    assert "written 1, unchanged 59" in capsys.readouterr().out
    np.testing.assert_array_equal(preprocess_bytes(victim.read_bytes()), x[int(index)])
    assert pngs[-1].stat().st_mtime_ns == untouched


def test_acquire_refuses_bad_checksum_and_writes_nothing(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    shutil.copytree(fmnist_dir, src)
    bad = src / "train-images-idx3-ubyte.gz"
    bad.chmod(0o644)
    data = bytearray(bad.read_bytes())
    data[5000] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "raw"
    assert acquire.main(["--source-dir", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "train-images-idx3-ubyte.gz" in err
    assert not out.exists()


def test_acquire_offline_names_the_local_copy_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)  # no local copy: acquire must download
    with socket.socket() as unreachable:  # bound, never listening: every connection is refused, as offline
        unreachable.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unreachable.getsockname()[1]}/"
        assert acquire.main(["--out", str(tmp_path / "raw"), "--download-url", url]) == 3
    err = capsys.readouterr().err
    assert f"could not download train-images-idx3-ubyte.gz: {url}" in err
    assert "FASHION_MNIST_DIR" in err and "apt-get install dataset-fashion-mnist" in err
    assert "/usr/share/datasets/fashion-mnist" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "nothing written: no download cache, no raw folder"
