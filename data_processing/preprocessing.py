"""THE preprocessing function: the only path from image bytes to model input.

Training (via ``data_processing.process``), the API and the nightly batch all call
:func:`preprocess_bytes` and :func:`to_model_batch`, so there is no train/serve skew.

Any photo (PNG, JPEG, WebP or BMP; RGB, grayscale, palette, RGBA, CMYK or 16-bit; any size; light or dark
background; EXIF-rotated) becomes a 28x28 uint8 image, light item on a dark background, framed the way
Fashion-MNIST frames its items: background removed, cropped to the item, longest side scaled to 28 px,
centred. A Fashion-MNIST image itself passes through unchanged (identity), so the processed training set
has exactly the original pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 28
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo; anything bigger is refused before decoding
_FOREGROUND_THRESHOLD = 24  # after background removal, pixels above this belong to the item
_DRAFT_SIZE = (SIZE * 16, SIZE * 16)  # JPEGs are decoded at a reduced scale that still frames the item well
_MAX_SQUARE_SIDE = 4096  # longest side of the padded square canvas (64 MiB of float32)
# A 28x28 input with at least this share of pure-black border pixels is already in Fashion-MNIST form (every one of
# the 70,000 originals has >= 6% zeros on its border, even the ~75 whose item touches the frame).
_NATIVE_BLACK_BORDER_SHARE = 0.05

# Formats we recognise but do not accept (-> 415 rather than "undecodable" 400).
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x76\x2f\x31\x01", "EXR"),
    (b"gimp xcf", "XCF"),
    (b"\x00\x00\x00\x1cftypheic", "HEIC"),
    (b"\x00\x00\x00\x18ftypheic", "HEIC"),
    (b"\x00\x00\x00\x1cftypavif", "AVIF"),
    (b"\x00\x00\x00\x20ftypavif", "AVIF"),
)


class ImageError(ValueError):
    """An upload that cannot become model input. ``code`` and ``http_status`` feed the API's JSON errors."""

    code = "invalid_image"
    http_status = 400


class EmptyImage(ImageError):
    code = "empty_image"


class InvalidImage(ImageError):
    code = "invalid_image"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"
    http_status = 415


class ImageTooLarge(ImageError):
    code = "image_too_large"
    http_status = 413


def sniff_format(data: bytes) -> str | None:
    """Name a well-known non-accepted format from its leading bytes, or None."""
    for sig, name in _KNOWN_SIGNATURES:
        if data.startswith(sig):
            return name
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head:
        return "SVG"
    return None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into a Pillow image, refusing formats outside the allow-list and pixel bombs.

    The size check reads only the header, so a 65535x65535 bomb is refused before any pixel is decoded.
    """
    if not data:
        raise EmptyImage("the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        known = sniff_format(data)
        if known:
            raise UnsupportedFormat(f"{known} is not accepted; send one of: {', '.join(ALLOWED_FORMATS)}") from exc
        raise InvalidImage("the file is not a decodable PNG, JPEG, WebP or BMP image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"the image header is damaged: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")
    if img.format == "JPEG":
        img.draft("RGB", _DRAFT_SIZE)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except MemoryError as exc:
        raise ImageTooLarge("the image needs too much memory to decode") from exc
    except Exception as exc:  # decoders and the EXIF parser raise struct.error, IndexError, ... on hostile input
        raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from exc
    return img


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 2-D uint8 luminance. Transparency is composited onto white (a photo backdrop)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        return np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        backdrop = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(backdrop, img.convert("RGBA"))
    if img.mode != "L":
        img = img.convert("RGB").convert("L")
    return np.asarray(img, dtype=np.uint8)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])


def preprocess_array(gray: np.ndarray) -> np.ndarray:
    """2-D uint8 grayscale of any size -> 28x28 uint8, light item on dark background (pure function)."""
    if gray.ndim != 2 or gray.size == 0:
        raise InvalidImage(f"expected a non-empty 2-D grayscale array, got shape {gray.shape}")
    border = _border(gray)
    if gray.shape == (SIZE, SIZE) and np.count_nonzero(border == 0) >= _NATIVE_BLACK_BORDER_SHARE * border.size:
        # Already Fashion-MNIST form (light item on true black): pass through, even when the item touches the
        # frame and a median-based background estimate would stretch or invert it.
        return np.array(gray, dtype=np.uint8, copy=True)
    background = float(np.median(border))
    img = gray.astype(np.float32)
    if background > 127.5:  # dark item on a light backdrop: flip polarity
        img = 255.0 - img
        background = 255.0 - background
    if background > 0:  # lift the backdrop to black, keep the item's full range
        img = np.clip((img - background) * (255.0 / (255.0 - background)), 0.0, 255.0)
    if gray.shape == (SIZE, SIZE):
        return img.round().astype(np.uint8)

    mask = img > _FOREGROUND_THRESHOLD
    if mask.any():
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        img = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = img.shape
    if max(h, w) > _MAX_SQUARE_SIDE:
        # An extreme aspect ratio (e.g. 1 x 100000) would need a side x side canvas of many GiB: shrink the
        # crop first (aspect kept, at least 1 px), so the canvas stays small. Ordinary crops never get here.
        scale = _MAX_SQUARE_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
        h, w = img.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = img
    small = Image.fromarray(square.round().astype(np.uint8), mode="L").resize(
        (SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    return np.asarray(small, dtype=np.uint8)


def preprocess_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes -> 28x28 uint8 model image. Raises :class:`ImageError` subclasses on bad input."""
    return preprocess_array(to_grayscale(decode_image(data, max_pixels=max_pixels)))


def to_model_batch(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """28x28 uint8 images -> float32 model input of shape (N, 28, 28, 1), values in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected images of shape (N, {SIZE}, {SIZE}), got {arr.shape}")
    return (arr.astype(np.float32) / 255.0)[..., None]


def encode_png(image: np.ndarray) -> bytes:
    """A 2-D uint8 array as PNG bytes (lossless, so a round trip is exact)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()
