"""Fashion-MNIST: the four original IDX ``.gz`` files, their published checksums, download and a pure IDX parser.

A file is accepted when its ``.gz`` MD5 *and* SHA-256 match the published ones (Zalando's originals), or when its
uncompressed content's SHA-256 matches (a re-compressed copy such as Debian's ``dataset-fashion-mnist``). Anything
else is refused with :class:`ChecksumError` and nothing is written.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BASE_URLS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


@dataclass(frozen=True)
class IdxFile:
    name: str
    md5: str  # of the .gz, as published by Zalando
    sha256: str  # of the .gz
    raw_sha256: str  # of the uncompressed IDX content
    shape: tuple[int, ...]


FILES: dict[str, IdxFile] = {
    f.name: f
    for f in (
        IdxFile(
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            (60000, 28, 28),
        ),
        IdxFile(
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            (60000,),
        ),
        IdxFile(
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            (10000, 28, 28),
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            (10000,),
        ),
    )
}
SPLIT_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}  # fmt: skip


class ChecksumError(ValueError):
    """A file does not match the published checksums."""


class IdxFormatError(ValueError):
    """Bytes that are not a well-formed IDX file of the expected shape."""


class DownloadError(ConnectionError):
    """No download source answered (offline, or every host down); nothing was written."""


def verify(spec: IdxFile, gz_bytes: bytes) -> bytes:
    """Return the uncompressed IDX content of ``gz_bytes`` if it is the published file; else raise ChecksumError."""
    if (
        hashlib.md5(gz_bytes, usedforsecurity=False).hexdigest() == spec.md5
        and hashlib.sha256(gz_bytes).hexdigest() == spec.sha256
    ):
        return gzip.decompress(gz_bytes)
    try:
        raw = gzip.decompress(gz_bytes)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ChecksumError(f"{spec.name}: checksum mismatch and not a valid gzip file ({exc})") from exc
    if hashlib.sha256(raw).hexdigest() == spec.raw_sha256:
        return raw  # a re-compressed copy of the same content
    raise ChecksumError(
        f"{spec.name}: checksum mismatch (md5 {hashlib.md5(gz_bytes, usedforsecurity=False).hexdigest()}, "
        f"expected {spec.md5}; uncompressed sha256 {hashlib.sha256(raw).hexdigest()[:16]}..., "
        f"expected {spec.raw_sha256[:16]}...): refusing to use it"
    )


def parse_idx(data: bytes, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse uncompressed IDX bytes (unsigned-byte data only) into a uint8 array, validating magic and shape."""
    if len(data) < 4:
        raise IdxFormatError("IDX data shorter than its 4-byte magic number")
    zero1, zero2, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0:
        raise IdxFormatError(f"bad IDX magic {data[:4].hex()}: must start with two zero bytes")
    if dtype_code != 0x08:
        raise IdxFormatError(f"unsupported IDX data type 0x{dtype_code:02x} (only unsigned byte 0x08)")
    if ndim == 0:
        raise IdxFormatError("IDX file declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError("IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count:
        raise IdxFormatError(f"IDX payload is {len(data) - header} bytes, shape {shape} needs {count}")
    if expected_shape is not None and shape != tuple(expected_shape):
        raise IdxFormatError(f"IDX shape {shape}, expected {tuple(expected_shape)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _download(url: str, timeout: float = 120.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def fetch(spec: IdxFile, source_dir: Path | None, cache_dir: Path, base_urls: Sequence[str] = BASE_URLS) -> bytes:
    """Verified uncompressed IDX bytes of one file: from ``source_dir`` or the cache, else downloaded into the cache
    from the first of ``base_urls`` that answers (:class:`DownloadError` when none does).

    A download goes to a temporary file in ``cache_dir``, is verified, and only then renamed into place.
    """
    if source_dir is not None:
        path = Path(source_dir) / spec.name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (FASHION_MNIST_DIR / --source-dir must hold the 4 IDX files)")
        return verify(spec, path.read_bytes())
    cache_dir = Path(cache_dir)
    cached = cache_dir / spec.name
    if cached.is_file():
        try:
            return verify(spec, cached.read_bytes())
        except ChecksumError:
            log.warning("cached %s is corrupt; downloading it again", cached)
    errors: list[str] = []
    for base in base_urls:
        url = base + spec.name
        try:
            log.info("downloading %s", url)
            data = _download(url)
            raw = verify(spec, data)
        except ChecksumError:
            raise
        except Exception as exc:  # network errors: try the mirror
            errors.append(f"{url}: {exc}")
            continue
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            shutil.move(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return raw
    raise DownloadError(f"could not download {spec.name}: " + "; ".join(errors))


def load_split(
    split: str, source_dir: Path | None, cache_dir: Path, base_urls: Sequence[str] = BASE_URLS
) -> tuple[np.ndarray, np.ndarray]:
    """(images (N,28,28) uint8, labels (N,) uint8) of ``train`` or ``test``, verified."""
    img_name, lbl_name = SPLIT_FILES[split]
    images = parse_idx(fetch(FILES[img_name], source_dir, cache_dir, base_urls), FILES[img_name].shape)
    labels = parse_idx(fetch(FILES[lbl_name], source_dir, cache_dir, base_urls), FILES[lbl_name].shape)
    if labels.max(initial=0) > 9:
        raise IdxFormatError(f"{lbl_name}: label {int(labels.max())} outside 0-9")
    return images, labels


def load_fashion_mnist(
    source_dir: Path | None, cache_dir: Path, base_urls: Sequence[str] = BASE_URLS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)`` from ``source_dir`` (a local copy) or downloaded into ``cache_dir``."""
    train_x, train_y = load_split("train", source_dir, cache_dir, base_urls)
    test_x, test_y = load_split("test", source_dir, cache_dir, base_urls)
    return train_x, train_y, test_x, test_y
