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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = 28
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo; anything bigger is refused before decoding
# Pixels decoded at full scale for one image. A 28x28 model needs a few hundred pixels across the item; a 12 MP phone
# photo (4032x3024) or a 4K screenshot fits. JPEGs are decoded at a reduced scale (draft) and are checked after it,
# so a 50 MP JPEG (decoded at 1/8 scale) still passes; PNG, WebP and BMP have no reduced-scale decode.
MAX_DECODE_PIXELS = 4096 * 4096
# An API request's defaults: four full-scale images' worth of decoded pixels in all, and 10 s of decoding.
MAX_REQUEST_PIXELS = 4 * MAX_DECODE_PIXELS
REQUEST_DECODE_SECONDS = 10.0
# Decoded images are box-reduced to this longest side before any numpy conversion: float copies of the full frame
# were the bulk of the memory, and the item is then still >> 28 px across.
_WORK_SIDE = 2048
_ROWS_PER_CHUNK = 256  # 16-bit/32-bit -> 8-bit conversion in row blocks: no full-size float copy
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
    """An upload that cannot become model input. ``code`` and ``http_status`` feed the API's JSON errors.

    The message is a short reason safe to show a client; ``detail`` (the decoder's own words, if any) is for logs.
    """

    code = "invalid_image"
    http_status = 400

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


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


class PixelBudgetExceeded(ImageTooLarge):
    """The images of one request together would decode more pixels than its budget."""

    code = "pixel_budget_exceeded"


class DecodeTimeExceeded(ImageTooLarge):
    """One request's decoding has used up its time budget."""

    code = "decode_time_exceeded"


@dataclass
class DecodeBudget:
    """What one request (or one batch item) may spend on decoding: pixels per image, pixels in total, seconds.

    Pixels are charged from the header (after a JPEG's draft scale is chosen), before anything is decoded, so a
    refusal costs no decoding. Time is checked between decoding steps (a single decode is bounded by the pixel
    caps); ``clock`` is injectable so tests need no wall clock. ``decoded_pixels`` is what was actually charged.
    """

    max_image_pixels: int = MAX_DECODE_PIXELS
    max_total_pixels: int | None = None
    max_seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    decoded_pixels: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def charge(self, width: int, height: int) -> None:
        pixels = width * height
        if pixels > self.max_image_pixels:
            raise ImageTooLarge(
                f"{width}x{height} = {pixels:,} pixels to decode exceeds the limit of {self.max_image_pixels:,}"
            )
        if self.max_total_pixels is not None and self.decoded_pixels + pixels > self.max_total_pixels:
            raise PixelBudgetExceeded(
                f"the images of this request exceed the budget of {self.max_total_pixels:,} decoded pixels"
            )
        self.check_time()
        self.decoded_pixels += pixels

    def check_time(self) -> None:
        if self.max_seconds is not None and self.clock() - self.started > self.max_seconds:
            raise DecodeTimeExceeded(f"decoding this request took longer than its budget of {self.max_seconds:g} s")


def sniff_format(data: bytes) -> str | None:
    """Name a well-known non-accepted format from its leading bytes, or None."""
    for sig, name in _KNOWN_SIGNATURES:
        if data.startswith(sig):
            return name
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head:
        return "SVG"
    return None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None) -> Image.Image:
    """Decode ``data`` into an upright Pillow image, refusing formats outside the allow-list and pixel bombs.

    Every size check reads only the header, so a 65535x65535 bomb is refused before any pixel is decoded:
    ``max_pixels`` bounds the declared size, ``budget`` (default: a fresh :class:`DecodeBudget`) the pixels
    decoded at full scale. JPEGs are decoded at a reduced scale (draft); large images of other formats are
    box-reduced to a working size before anything else touches them.
    """
    if not data:
        raise EmptyImage("the file is empty")
    budget = budget if budget is not None else DecodeBudget()
    budget.check_time()
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("the image has too many pixels", detail=str(exc)) from exc
    except UnidentifiedImageError as exc:
        known = sniff_format(data)
        if known:
            raise UnsupportedFormat(f"{known} is not accepted; send one of: {', '.join(ALLOWED_FORMATS)}") from exc
        raise InvalidImage("the file is not a decodable PNG, JPEG, WebP or BMP image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage("the image header is damaged", detail=str(exc)) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")
    if img.format == "JPEG":
        img.draft("RGB", _DRAFT_SIZE)
    budget.charge(*img.size)
    try:
        img.load()
        budget.check_time()
        orientation = img.getexif().get(0x0112, 1)  # after load: a PNG's eXIf chunk may follow its pixel data
        img = _reduce_to_working_size(img)
        img = _apply_orientation(img, orientation)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("the image has too many pixels", detail=str(exc)) from exc
    except MemoryError as exc:
        raise ImageTooLarge("the image needs too much memory to decode") from exc
    except Exception as exc:  # decoders and the EXIF parser raise struct.error, IndexError, ... on hostile input
        raise InvalidImage("the image data is truncated or corrupt", detail=f"{type(exc).__name__}: {exc}") from exc
    return img


# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F", "PA"})


def _apply_orientation(img: Image.Image, orientation: object) -> Image.Image:
    # Applied after the reduction (read from the header before it), so a rotation copies the small image.
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


def _reduce_factor(size: tuple[int, int]) -> int:
    return -(-max(size) // _WORK_SIDE)  # ceil: the reduced longest side is at most _WORK_SIDE


def _reduce_to_working_size(img: Image.Image) -> Image.Image:
    """Box-average a large image down to ``_WORK_SIDE`` in its own mode (palette and 16-bit modes, which Pillow
    cannot reduce, are reduced by :func:`to_grayscale` after their 8-bit conversion)."""
    factor = _reduce_factor(img.size)
    if factor <= 1 or img.mode not in _REDUCIBLE_MODES:
        return img
    return img.reduce(factor)


def _to_uint8(arr: np.ndarray, top: float) -> np.ndarray:
    """A 16/32-bit integer or float image scaled so ``top`` -> 255, in row blocks of float32 (never a full-size
    float64 copy: a 50 MP 16-bit PNG took +1.24 GB that way). For 16-bit input (top 65535) the result equals
    ``round(v * 255 / 65535)`` exactly: v/257 is never within float32 error of a .5."""
    out = np.empty(arr.shape, dtype=np.uint8)
    scale = np.float32(255.0 / top)
    for r in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        block = arr[r : r + _ROWS_PER_CHUNK].astype(np.float32) * scale
        out[r : r + _ROWS_PER_CHUNK] = np.clip(np.rint(block), 0, 255)
    return out


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 2-D uint8 luminance. Transparency is composited onto white (a photo backdrop).

    Images larger than the working size are box-reduced before the luminance conversion."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        peak = float(np.max(arr, initial=0)) if mode in ("I", "F") else 0.0
        top = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        if mode == "F":
            top = max(peak, 1.0)
        img = Image.fromarray(_to_uint8(arr, top), mode="L")
        return np.asarray(_reduce_to_working_size(img), dtype=np.uint8)
    if mode in ("P", "1"):
        img = img.convert("RGBA" if "transparency" in img.info else ("L" if mode == "1" else "RGB"))
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    img = _reduce_to_working_size(img)
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


def preprocess_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None) -> np.ndarray:
    """Image bytes -> 28x28 uint8 model image. Raises :class:`ImageError` subclasses on bad input.

    ``budget``: what decoding may cost (one per request, shared by its images); default: one image's caps."""
    return preprocess_array(to_grayscale(decode_image(data, max_pixels=max_pixels, budget=budget)))


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
