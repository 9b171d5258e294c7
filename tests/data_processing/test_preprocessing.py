"""THE preprocessing function on generated images and on real Fashion-MNIST images."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.images import encode_png
from data_ingestion.fashion_mnist import load_split
from data_processing.preprocessing import (
    ALLOWED_FORMATS,
    EmptyImage,
    ImageTooLarge,
    InvalidImage,
    UnsupportedFormat,
    preprocess_array,
    preprocess_bytes,
    to_model_batch,
)
from tests.support.data import jpeg_bytes


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(h: int = 300, w: int = 200, rgb: bool = True) -> np.ndarray:
    """A dark 'item' (a rectangle, upper part darker) on a white backdrop with mild noise, like a product photo."""
    rng = np.random.default_rng(1)
    img = np.full((h, w), 245, np.float32) + rng.normal(0, 3, (h, w))
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 60
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = 20
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img, img, (img * 0.9).astype(np.uint8)], -1) if rgb else img


def test_dark_on_white_rgb_photo_becomes_light_on_dark_28x28() -> None:
    out = preprocess_bytes(encode(Image.fromarray(photo()), "PNG"))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    border = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
    assert np.median(border) < 10  # background is now dark
    assert out[14, 14] > 150  # the item is now light
    # Framed like Fashion-MNIST: the item's longest side (height) spans ~the full 28 px.
    rows = np.flatnonzero((out > 30).any(axis=1))
    assert rows[-1] - rows[0] >= 24
    assert out[10, 14] > out[20, 14]  # the darker upper part is brighter after inversion


@pytest.mark.parametrize("size", [(28, 28), (17, 40), (1000, 640), (64, 64)])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_any_mode_and_size_gives_28x28(size: tuple[int, int], mode: str) -> None:
    gray = photo(*size, rgb=False)
    img = Image.fromarray(gray)
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    out = preprocess_bytes(encode(img, "PNG"))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() > 100
    assert max(out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]) < 20  # corners: background, now dark


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "PNG"])
def test_allowed_formats_decode(fmt: str) -> None:
    assert fmt in ALLOWED_FORMATS
    out = preprocess_bytes(encode(Image.fromarray(photo()), fmt))
    assert out.shape == (28, 28) and out[14, 14] > 120


def test_exif_orientation_is_honoured() -> None:
    # A wide item stored sideways with EXIF "rotate 90": after transposition it must be tall.
    upright = photo(300, 120, rgb=True)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what the camera wrote (wide)
    assert stored.shape[1] > stored.shape[0]
    plain = preprocess_bytes(jpeg_bytes(stored))
    rotated = preprocess_bytes(jpeg_bytes(stored, exif_orientation=6))  # 6 = rotate 90 CW to display
    expected = preprocess_bytes(jpeg_bytes(upright))

    def extent(a: np.ndarray) -> tuple[int, int]:
        rows, cols = np.flatnonzero((a > 40).any(1)), np.flatnonzero((a > 40).any(0))
        return rows[-1] - rows[0], cols[-1] - cols[0]

    assert extent(plain)[1] > extent(plain)[0]  # wide without EXIF handling
    assert extent(rotated)[0] > extent(rotated)[1]  # tall with it
    assert np.abs(rotated.astype(int) - expected.astype(int)).mean() < 12


def test_fashion_mnist_images_pass_unchanged(fmnist_dir: Path, tmp_path: Path) -> None:
    x, _ = load_split("train", fmnist_dir, tmp_path)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    touching = np.flatnonzero(np.median(border, axis=1) > 0)  # items touching the frame: the hard cases
    assert len(touching) > 10
    for i in [*range(300), *touching]:
        np.testing.assert_array_equal(preprocess_bytes(encode_png(x[i])), x[i], err_msg=f"train image {i}")


def test_28x28_dark_on_white_is_still_inverted() -> None:
    img = np.full((28, 28), 250, np.uint8)
    img[6:22, 9:19] = 30
    out = preprocess_array(img)
    assert out[0, 0] == 0 and out[14, 14] > 200


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries only a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def test_pixel_bomb_refused_before_decoding() -> None:
    # Headers with almost no pixel data: refusal as *too large* (not as truncated) proves the check precedes
    # decoding. 8000x8000 is over our limit but under Pillow's own bomb limit; 60000x60000 is over both.
    for side in (8000, 60000):
        with pytest.raises(ImageTooLarge) as exc:
            preprocess_bytes(_png_header_only(side, side))
        assert exc.value.http_status == 413
    with pytest.raises(InvalidImage):  # the same file at a legal size (<= 4096^2 decoded) fails only when decoded
        preprocess_bytes(_png_header_only(4000, 4000))
    with pytest.raises(ImageTooLarge):
        preprocess_bytes(encode(Image.new("L", (300, 300)), "PNG"), max_pixels=10_000)


@pytest.mark.parametrize(
    ("data", "error", "status"),
    [
        (b"", EmptyImage, 400),
        (b"GIF89a" + b"\x00" * 50, UnsupportedFormat, 415),
        (b"II*\x00" + b"\x00" * 50, UnsupportedFormat, 415),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', UnsupportedFormat, 415),
        (b"definitely not an image", InvalidImage, 400),
    ],
)
def test_allow_list_and_garbage(data: bytes, error: type, status: int) -> None:
    with pytest.raises(error) as exc:
        preprocess_bytes(data)
    assert exc.value.http_status == status


def test_real_gif_is_refused_and_truncated_png_is_invalid() -> None:
    with pytest.raises(UnsupportedFormat):
        preprocess_bytes(encode(Image.fromarray(photo(rgb=False)), "GIF"))
    png = encode(Image.fromarray(photo(rgb=False)), "PNG")
    with pytest.raises(InvalidImage):
        preprocess_bytes(png[: len(png) // 2])


def test_to_model_batch_shapes_and_range() -> None:
    imgs = np.stack([np.full((28, 28), 255, np.uint8), np.zeros((28, 28), np.uint8)])
    batch = to_model_batch(imgs)
    assert batch.shape == (2, 28, 28, 1) and batch.dtype == np.float32
    assert batch.max() == 1.0 and batch.min() == 0.0
    assert to_model_batch(imgs[0]).shape == (1, 28, 28, 1)
    with pytest.raises(ValueError, match="expected images"):
        to_model_batch(np.zeros((2, 27, 28), np.uint8))
