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
from PIL import Image, ImageFilter, UnidentifiedImageError

from data_processing import containers, segmenter
from data_processing.image_errors import (  # noqa: F401 (re-exported: this module's vocabulary, pp.ImageError ...)
    DecodeTimeExceeded,
    DecodeWorkExceeded,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    InvalidImage,
    PixelBudgetExceeded,
    UnsupportedFormat,
)

SIZE = 28
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo; anything bigger is refused before decoding
# Pixels decoded at full scale for one image. A 28x28 model needs a few hundred pixels across the item; a 12 MP phone
# photo (4032x3024) or a 4K screenshot fits. JPEGs are decoded at a reduced scale (draft) and are checked after it,
# so a 50 MP JPEG (decoded at 1/8 scale) still passes; PNG, WebP and BMP have no reduced-scale decode.
MAX_DECODE_PIXELS = 4096 * 4096
# An API request's defaults: four full-scale images' worth of decoded pixels in all, four images' worth of decoding
# work (data_processing.containers: samples decoded over every pass, at the declared size), and 10 s of decoding.
MAX_REQUEST_PIXELS = 4 * MAX_DECODE_PIXELS
MAX_REQUEST_WORK = 4 * containers.WORK_PER_PIXEL * MAX_PIXELS
REQUEST_DECODE_SECONDS = 10.0
# Under a time budget, an image whose decoding work is above this runs in the stoppable child process
# (data_processing.sandbox); smaller ones (a 28x28 item, a 2 MP photo: a few ms at most) decode in line, where the
# child's round trip (~1 ms) would cost more than they do.
INLINE_WORK = 4_000_000
# Decoded images are box-reduced to this longest side before any numpy conversion: float copies of the full frame
# were the bulk of the memory, and the item is then still >> 28 px across.
_WORK_SIDE = 2048
_ROWS_PER_CHUNK = 256  # 16-bit/32-bit -> 8-bit conversion in row blocks: no full-size float copy
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
)
# ISO base media files (HEIF, AVIF, MP4, ...) start with an ``ftyp`` box naming brands; any box size, any brand.
_AVIF_BRANDS = frozenset({b"avif", b"avis", b"avio"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})


@dataclass
class DecodeBudget:
    """What one request (or one batch item) may spend on decoding: pixels per image, pixels and work in total,
    seconds.

    Pixels and work are charged from the header and the container (:mod:`data_processing.containers`), before
    anything is decoded, so a refusal costs no decoding. With ``max_seconds`` the time is a hard stop: an image whose
    decoding is not trivially small runs in a child process that is killed when the budget runs out
    (:mod:`data_processing.sandbox`); without it, decoding runs in line (trusted data: training). ``clock`` is
    injectable so tests need no wall clock. ``decoded_pixels`` and ``decoded_work`` are what was charged.
    """

    max_image_pixels: int = MAX_DECODE_PIXELS
    max_total_pixels: int | None = None
    max_seconds: float | None = None
    max_total_work: int | None = None
    clock: Callable[[], float] = time.monotonic
    decoded_pixels: int = 0
    decoded_work: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def charge(self, width: int, height: int, *, why: str = "to decode") -> None:
        pixels = width * height
        if pixels > self.max_image_pixels:
            raise ImageTooLarge(
                f"{width}x{height} = {pixels:,} pixels {why} exceeds the limit of {self.max_image_pixels:,}"
            )
        if self.max_total_pixels is not None and self.decoded_pixels + pixels > self.max_total_pixels:
            raise PixelBudgetExceeded(
                f"the images of this request exceed the budget of {self.max_total_pixels:,} decoded pixels"
            )
        self.check_time()
        self.decoded_pixels += pixels

    def charge_work(self, work: int) -> None:
        if self.max_total_work is not None and self.decoded_work + work > self.max_total_work:
            raise DecodeWorkExceeded(
                f"the images of this request exceed the budget of {self.max_total_work:,} samples of decoding work"
            )
        self.decoded_work += work

    def check_time(self) -> None:
        if self.max_seconds is not None and self.clock() - self.started > self.max_seconds:
            raise DecodeTimeExceeded(f"decoding this request took longer than its budget of {self.max_seconds:g} s")

    def remaining_seconds(self) -> float | None:
        """Seconds left of the time budget (None: no time limit)."""
        return None if self.max_seconds is None else self.max_seconds - (self.clock() - self.started)


def sniff_format(data: bytes) -> str | None:
    """Name a well-known non-accepted format from its leading bytes, or None."""
    for sig, name in _KNOWN_SIGNATURES:
        if data.startswith(sig):
            return name
    if data[4:8] == b"ftyp":
        return _iso_media_kind(data)
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head:
        return "SVG"
    return None


def _iso_media_kind(data: bytes) -> str:
    """HEIC, AVIF or another ISO media file, from the brands of its ``ftyp`` box."""
    size = int.from_bytes(data[:4], "big")
    box = data[8 : min(max(size, 16), 4096)]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4) if i != 4}  # major, then compatible (skip version)
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIC"
    return "ISO media (MP4, MOV, ...)"


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None) -> Image.Image:
    """Decode ``data`` into an upright Pillow image, refusing formats outside the allow-list, pixel bombs and
    decoding-work bombs.

    Every check reads only the header and the container, so a 65535x65535 bomb or a JPEG of 2,000 scans is refused
    before any pixel is decoded: ``max_pixels`` bounds the declared size, ``budget`` (default: a fresh
    :class:`DecodeBudget`) the pixels decoded at full scale and the decoding work. JPEGs are decoded at a reduced
    scale (draft); large images of other formats are box-reduced to a working size before anything else touches
    them. Decodes in this process, whatever the budget (:func:`preprocess_bytes` is the stoppable path).
    """
    img, _ = open_image(data, max_pixels=max_pixels, budget=budget if budget is not None else DecodeBudget())
    return finish_decoding(img)


def open_image(data: bytes, *, max_pixels: int, budget: DecodeBudget) -> tuple[Image.Image, containers.Survey]:
    """Survey the container, open the header and charge ``budget``: everything before the pixels are decoded."""
    if not data:
        raise EmptyImage("the file is empty")
    budget.check_time()
    try:
        survey = containers.survey(data)
    except containers.WorkLimitExceeded as exc:
        raise DecodeWorkExceeded(str(exc)) from exc
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")
    try:
        containers.check_work(survey, max_pixels=max_pixels)
    except containers.WorkLimitExceeded as exc:
        raise DecodeWorkExceeded(str(exc)) from exc
    if img.format in ("JPEG", "MPO"):  # MPO: a JPEG with further images appended (Ultra HDR, some cameras)
        img.draft("RGB", _DRAFT_SIZE)
    if survey.progressive:  # its coefficients are held at the declared size whatever the draft scale
        budget.charge(width, height, why="(a progressive JPEG keeps them all while decoding)")
    else:
        budget.charge(*img.size)
    budget.charge_work(survey.work)
    return img, survey


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("the image has too many pixels", detail=str(exc)) from exc
    except UnidentifiedImageError as exc:
        known = sniff_format(data)
        if known:
            raise UnsupportedFormat(f"{known} is not accepted; send one of: {', '.join(ALLOWED_FORMATS)}") from exc
        raise InvalidImage("the file is not a decodable PNG, JPEG, WebP or BMP image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage("the image header is damaged", detail=str(exc)) from exc


def finish_decoding(img: Image.Image) -> Image.Image:
    """Decode an opened image's pixels, upright and reduced to the working size."""
    try:
        img.load()
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


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> an 8-bit ``L`` or ``RGB`` image at the working size. Transparency is composited onto white
    (a photo backdrop); 16/32-bit and float images are scaled to 8 bits."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        peak = float(np.max(arr, initial=0)) if mode in ("I", "F") else 0.0
        top = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        if mode == "F":
            top = max(peak, 1.0)
        return _reduce_to_working_size(Image.fromarray(_to_uint8(arr, top), mode="L"))
    if mode in ("P", "1"):
        img = img.convert("RGBA" if "transparency" in img.info else ("L" if mode == "1" else "RGB"))
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    img = _reduce_to_working_size(img)
    if img.mode in ("RGBA", "RGBa"):
        backdrop = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(backdrop, img.convert("RGBA"))
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 2-D uint8 luminance (ITU-R 601, Pillow's ``convert("L")``) at the working size."""
    img = _to_8bit(img)
    return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)


def to_pixels(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 pixels at the working size: 2-D for a grey image, (H, W, 3) for a colour one (the
    photo path tells an item from its surface by colour too). Grey images stay 2-D, so a Fashion-MNIST PNG is
    the same array :func:`to_grayscale` gives."""
    img = _to_8bit(img)
    return np.asarray(img, dtype=np.uint8)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])


def preprocess_array(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels of any size, 2-D grey or (H, W, 3) colour -> 28x28 uint8, light item on dark background (pure
    function)."""
    colour = None
    if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.size:
        colour = np.ascontiguousarray(pixels, dtype=np.uint8)
        gray = np.asarray(Image.fromarray(colour, mode="RGB").convert("L"), dtype=np.uint8)  # what to_grayscale gives
    else:
        gray = pixels
    if gray.ndim != 2 or gray.size == 0:
        raise InvalidImage(f"expected a non-empty 2-D grey or (H, W, 3) colour array, got shape {pixels.shape}")
    border = _border(gray)
    if gray.shape == (SIZE, SIZE) and np.count_nonzero(border == 0) >= _NATIVE_BLACK_BORDER_SHARE * border.size:
        # Already Fashion-MNIST form (light item on true black): pass through, even when the item touches the
        # frame and a median-based background estimate would stretch or invert it.
        return np.array(gray, dtype=np.uint8, copy=True)
    if gray.shape == (SIZE, SIZE):
        return _small_to_model(gray, float(np.median(border)))
    return _photo_to_model(gray, colour)


def _small_to_model(gray: np.ndarray, background: float) -> np.ndarray:
    """A 28x28 image that is not in Fashion-MNIST form (e.g. dark on white): polarity and backdrop only, no
    reframing (it is already 28x28)."""
    img = gray.astype(np.float32)
    if background > 127.5:  # dark item on a light backdrop: flip polarity
        img = 255.0 - img
        background = 255.0 - background
    if background > 0:  # lift the backdrop to black, keep the item's full range
        img = np.clip((img - background) * (255.0 / (255.0 - background)), 0.0, 255.0)
    return img.round().astype(np.uint8)


# --- the photo path ----------------------------------------------------------------------------------------
# Fashion-MNIST's own conversion of a product photo: trim the edges close to the backdrop's colour, resize the
# longest side to 28, centre, negate. Its items are "how dark, relative to a white backdrop", and its
# intensities end up stretched so the darkest part of the item is (nearly) 255: 92 % of the training images have
# a pixel at 255, 99 % one at >= 254. A photo is brought to the same form: divide by an estimate of the lit
# backdrop (uneven light and vignetting cancel), crop to the item, frame it like Fashion-MNIST, stretch its
# darkest part to 255.

_LOW_RES = 128  # longest side of the copy on which the backdrop and the item's box are estimated
_RING = 0.08  # width of the border ring the backdrop surface is fitted to (share of each side)
_ITEM_SHARE = 0.4  # the item: smoothed darkness above this share of its robust maximum ...
# ... grown into the fainter parts connected to it, down to this share: a dark garment's body under its bright seams,
# a bag's handle. Not lower: below it, shadows and the backdrop's texture connect too. On 5,000 rendered validation
# photos, three models: +0.41 points at 0.25 (+0.39 without the border rule below), +0.30 at 0.30, +0.01 at 0.15.
_ITEM_GROW = 0.25
_TEXTURE_MARGIN = 1.5  # ... and clearly above the backdrop's texture (its border's 99th percentile, times this)
# Low-resolution pixels added around the item's box. None: Fashion-MNIST trims its items to the edge, and training's
# reframing (model._reframe) crops to the item's pixels too. On 5,000 rendered validation photos, four models: a margin
# of 2 pixels -0.48 points, 1 (the rule before) 0, none +0.32 (every model +0.20 to +0.40), -1 (shaving) +0.21.
_BOX_MARGIN = 0
_SHARPEN_PERCENT = 50
# The crop's resampling to 28x28. Fashion-MNIST subsampled (skipped rows and columns); on a photo that keeps its noise
# and JPEG blocks: -1.17 points on 5,000 rendered validation photos, four models, where box and bicubic tied with
# Lanczos (means -0.04 / +0.06; `python benchmarks/bench_photo_path.py --previous nearest|box|bicubic ...`).
_RESAMPLE = Image.Resampling.LANCZOS
_ITEM_FLOOR = 0.05  # ... and above 5 % darkness (Fashion-MNIST trims edges within 5 % of the backdrop's colour)
# An item that stands out from its backdrop (beyond the noise) by fewer grey levels than this is stretched less, in
# proportion: a blank or covered shot must stay dim, and so uncertain, instead of its noise being stretched into a
# full-contrast "item". Blank shots measure 0; of 1,000 rendered validation photos one stands out by less than this
# (a light item on a coloured backdrop, 6.7 levels) and two by less than 12.
_MIN_CONTRAST = 8.0


def _box_downsample(img: np.ndarray, longest: int) -> np.ndarray:
    h, w = img.shape
    scale = min(1.0, longest / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img.astype(np.float32)
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))


def _poly_terms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Quadratic surface terms of normalised coordinates: 1, x, y, x^2, xy, y^2."""
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _fit_backdrop(small: np.ndarray) -> np.ndarray:
    """Coefficients of a quadratic surface fitted to the border ring of ``small`` (a linear light gradient and
    vignetting are both quadratic-ish), refitted without the ring pixels it explains badly (a cut item or a
    shadow touching the edge)."""
    h, w = small.shape
    ys, xs = np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ring = np.zeros((h, w), dtype=bool)
    by, bx = max(1, round(_RING * h)), max(1, round(_RING * w))
    ring[:by], ring[-by:], ring[:, :bx], ring[:, -bx:] = True, True, True, True
    a, b = _poly_terms(yy[ring], xx[ring]).astype(np.float64), small[ring].astype(np.float64)
    keep = np.ones(len(b), dtype=bool)
    coef = np.array([float(np.median(b)), 0, 0, 0, 0, 0])
    for _ in range(3):
        if keep.sum() < 12:
            break
        ak = a[keep]
        # Normal equations of a 6-term fit (lstsq's SVD was ~10 ms a call): well conditioned on [-1, 1] terms.
        coef = np.linalg.solve(ak.T @ ak + 1e-6 * np.eye(6), ak.T @ b[keep])
        resid = b - a @ coef
        mad = float(np.median(np.abs(resid[keep] - np.median(resid[keep])))) + 1.0
        keep = np.abs(resid) < 4.0 * mad
    return coef


def _eval_surface(coef: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The fitted surface at ``shape``, by broadcasting (h, 1) and (1, w) terms: no (h, w, 6) array for a
    12-megapixel photo."""
    h, w = shape
    row = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    col = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    c = coef.astype(np.float32)
    return c[0] + c[1] * col + c[2] * row + c[3] * col * col + c[4] * col * row + c[5] * row * row


def backdrop_surface(gray: np.ndarray) -> np.ndarray:
    """A smooth estimate of the backdrop's brightness at every pixel of ``gray``."""
    return _eval_surface(_fit_backdrop(_box_downsample(gray, _LOW_RES)), gray.shape)


def _noise_tolerance(resid: np.ndarray) -> float:
    """Grey levels a pixel may differ from the fitted backdrop by noise alone (texture, sensor, JPEG)."""
    return 3.0 * float(np.median(np.abs(resid))) + 2.0


def _backdrop_fit(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The backdrop surface's coefficients and the residual of the low-resolution copy it is fitted on."""
    small = _box_downsample(gray, _LOW_RES)
    coef = _fit_backdrop(small)
    return coef, small - _eval_surface(coef, small.shape)


def _contrast(resid: np.ndarray) -> float:
    # The noise is measured on the border ring, which is backdrop (an item may fill most of the frame).
    return max(0.0, float(np.percentile(np.abs(resid), 99.5)) - _noise_tolerance(_border(resid)))


def item_contrast(gray: np.ndarray) -> float:
    """How many grey levels the item stands out from the fitted backdrop beyond its noise (robust maximum, on the
    low-resolution copy the backdrop is fitted on); 0 when nothing does."""
    return _contrast(_backdrop_fit(gray)[1])


def item_darkness(gray: np.ndarray) -> np.ndarray:
    """Per pixel, how much the item stands out from the backdrop, in [0, 1]: ``1 - pixel / backdrop`` when the
    item is darker than its backdrop (it absorbs light), ``(pixel - backdrop) / (255 - backdrop)`` when lighter.

    Which of the two is decided by the item, not by the backdrop's brightness: whether the pixels that differ
    from the fitted backdrop mostly lie below or above it (a mid-grey backdrop in a vignetted photo can have a
    border median on either side of 127.5)."""
    return _darkness(gray, *_backdrop_fit(gray))


def _darkness(gray: np.ndarray, coef: np.ndarray, resid: np.ndarray) -> np.ndarray:
    tol = _noise_tolerance(resid)
    darker = float(np.sum(np.clip(-resid - tol, 0.0, None)))
    lighter = float(np.sum(np.clip(resid - tol, 0.0, None)))
    surface = _eval_surface(coef, gray.shape)
    img = gray.astype(np.float32)
    if darker >= lighter:
        out = 1.0 - img / np.maximum(surface, 1.0)
    else:
        out = (img - surface) / np.maximum(255.0 - surface, 1.0)
    return np.clip(out, 0.0, 1.0)


def item_box(darkness: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of the item in ``darkness``: estimated on a smoothed
    low-resolution copy (JPEG blocks, texture and noise average out), as the connected regions above
    :data:`_ITEM_SHARE` of the item's robust maximum that are big enough to matter, grown into the fainter regions
    (above :data:`_ITEM_GROW` of it) they connect to; the whole image when there are none."""
    from scipy import ndimage

    small = ndimage.uniform_filter(_box_downsample(darkness, _LOW_RES), size=3, mode="nearest")
    return _box_in(_item_parts(small), darkness.shape)


def _item_parts(small: np.ndarray) -> np.ndarray | None:
    """:func:`item_box`'s rule on a smoothed low-resolution darkness map: the item's pixels, or None."""
    from scipy import ndimage

    peak = float(np.percentile(small, 99.5))
    mask = small > max(_ITEM_FLOOR, _ITEM_SHARE * peak)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    texture = _TEXTURE_MARGIN * float(np.percentile(_border(small), 99))  # the backdrop's own darkest specks
    return keep | _faint_parts(small, keep, max(_ITEM_FLOOR, _ITEM_GROW * peak, texture))


def _box_in(keep: np.ndarray | None, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of a low-resolution mask in the coordinates of a ``shape`` image (exclusive ends, plus
    :data:`_BOX_MARGIN`); the whole image for None."""
    h, w = shape
    if keep is None or not keep.any():
        return 0, h, 0, w
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    sh, sw = keep.shape
    m = _BOX_MARGIN
    top, bottom = max(0, rows[0] - m) * h // sh, min(sh, rows[-1] + 1 + m) * h // sh
    left, right = max(0, cols[0] - m) * w // sw, min(sw, cols[-1] + 1 + m) * w // sw
    return int(top), int(bottom), int(left), int(right)


def _faint_parts(small: np.ndarray, item: np.ndarray, threshold: float) -> np.ndarray:
    """The regions of ``small`` above ``threshold`` that touch ``item``. Of an item clear of the frame, a region
    reaching the frame is not taken: grout lines, wood grain or a light gradient run there, a garment does not."""
    from scipy import ndimage

    faint, _ = ndimage.label(small > threshold)
    ids = np.unique(faint[item])
    ids = ids[ids > 0]
    edge = np.zeros(small.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    if not (item & edge).any():
        ids = np.setdiff1d(ids, faint[edge])
    return np.isin(faint, ids)


# --- finding the item by colour and texture (issue 27) -------------------------------------------------------
# Brightness alone loses a green shirt on grey gravel (same brightness: the grey conversion erased the difference)
# and takes a tile pattern or gravel's grain for the item. So the photo path models the backdrop the way a person
# sees it: on the low-resolution copy, per pixel, its brightness relative to the fitted backdrop, two chromaticities
# (brightness-free colour: uneven light and shading do not change them) and a local texture statistic (the log of
# the brightness' local spread: gravel is rough, a garment smooth), all averaged over a small window; the border ring
# says what the backdrop's features are and how much they spread (median and MAD, so a cut item or a pen in the ring
# does not move them), and a pixel's score is how many spreads it lies from the backdrop (a Mahalanobis distance with
# a diagonal covariance). The item is the largest region the backdrop model cannot explain, grown and hole-filled
# like the brightness rule's; what the model sees is the item's darkness (relative to the fitted backdrop, as before)
# inside that silhouette and a two-pixel band around it, nothing farther out (texture, clutter), and at least a
# pedestal inside the silhouette (a garment that differs from its surface by colour alone is not blank).
# "grey" is the rule before (brightness only), "colour" this backdrop model, "refined" the backdrop model followed by
# a GrabCut-like refinement (colour models of item and backdrop re-estimated from the silhouette, neighbour
# smoothing); bench_photo_path.py compares them on the same photos.
# How the photo path finds the item: "learned" (data_processing.segmenter: a per-pixel network fitted on composites),
# "colour" (the hand-made rule: a distance from the backdrop's colour and texture, above a share of its peak),
# "refined" (that rule, then a GrabCut-like pass), "grey" (brightness only: the path before issue 27).
SEGMENTERS = ("grey", "colour", "refined", "learned")
_SEGMENTER = "learned"
_SMOOTH = 5  # low-resolution window (pixels) the features are averaged over: gravel's grain, JPEG blocks
# The least spread each feature is given on a backdrop (a plain one has almost none), in the order of _features:
# relative brightness, the log of the local spread, two chromaticities.
_FEATURE_FLOOR = np.array([0.02, 0.35, 0.01, 0.01], dtype=np.float32)
_SCORE_FLOOR = 4.0  # spreads from the backdrop below which nothing counts as item
_ITEM_PEDESTAL = 0.12  # the least darkness inside the silhouette: a garment as light as its reference stays visible
# An item whose box spans less than this share of the photo's height and width is looked for again on a crop around
# it (:data:`_ZOOM_MARGIN` of its size added on every side), as a person steps closer: on the 128-px copy a small
# item is a few dozen pixels, the features' 5-px window fills a trouser's leg gap, and the silhouette is coarse. On
# 1,500 real-surface validation photos, one model (docs/training.md): +1.5 points alone, +1.7 with the item's own
# white below; the plain benchmark's items mostly fill the frame. 0 turns it off.
_ZOOM_BELOW = 0.5
_ZOOM_MARGIN = 0.5
# The reference white of the item's darkness: the lighter of the fitted backdrop and this factor times the item's own
# lightest part (:data:`_ITEM_WHITE_PERCENTILE` inside the silhouette). Fashion-MNIST's items are their darkness
# against a white backdrop; against a backdrop as dark as the item (or darker), the backdrop rule left a flat or
# inverted item, the garment's shading clipped away. Against the item's own white, its shading is what it is on white:
# +4.4 points on 1,500 real-surface validation photos (same brightness +7), +0.5 on 400 plain ones. 0: the backdrop
# rule.
_ITEM_WHITE = 1.1
_ITEM_WHITE_PERCENTILE = 95.0


def _small_rgb(colour: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``colour`` box-averaged to ``shape`` (the grey copy's), float32 (h, w, 3)."""
    h, w = shape
    img = Image.fromarray(colour, mode="RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def _features(small: np.ndarray, surface: np.ndarray, rgb: np.ndarray | None, window: int = _SMOOTH) -> np.ndarray:
    """(k, h, w) features of the low-resolution copy, averaged over ``window``: relative brightness, log local
    spread (with ``window`` > 1), and (colour) two chromaticities."""
    from scipy import ndimage

    def smooth(img: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(img, window, mode="nearest") if window > 1 else img

    rel = small / np.maximum(surface, 1.0) - 1.0
    mean = smooth(rel)
    feats = [mean]
    if window >= _SMOOTH:
        feats.append(0.5 * np.log(np.maximum(smooth(rel * rel) - mean * mean, 1e-6)))
    if rgb is not None:
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        total = r + g + b + 30.0  # + 30: the chromaticity of near-black pixels is noise
        feats += [smooth((r - g) / total), smooth((r + g - 2.0 * b) / total)]
    return np.stack(feats).astype(np.float32)


def _ring(shape: tuple[int, int]) -> np.ndarray:
    return segmenter.border_ring(shape, _RING)


def item_score(feats: np.ndarray) -> np.ndarray:
    """Per low-resolution pixel, how many of the backdrop's spreads its features lie from the backdrop's (the
    border ring's median and MAD per feature, floored), combined as a diagonal Mahalanobis distance."""
    ring = _ring(feats.shape[1:])
    z = np.empty_like(feats)
    floors = _FEATURE_FLOOR[: len(feats)] if len(feats) in (2, 4) else _FEATURE_FLOOR[[0, 2, 3]][: len(feats)]
    for k, (f, least) in enumerate(zip(feats, floors, strict=True)):
        ref = f[ring]
        med = float(np.median(ref))
        spread = max(float(least), 1.4826 * float(np.median(np.abs(ref - med))))
        z[k] = (f - med) / spread
    return np.sqrt(np.sum(z * z, axis=0))


def _peak(score: np.ndarray) -> float:
    return float(np.percentile(score, 99.5))  # robust: a few hot pixels (JPEG, a speck) are not the item


def _stands_out(score: np.ndarray, peak: float) -> bool:
    """Whether anything on the low-resolution copy stands out of the backdrop (else a blank shot): the robust peak
    above :data:`_SCORE_FLOOR`, and pixels above the item's share of it."""
    return peak >= _SCORE_FLOOR and bool(np.any(score > max(_SCORE_FLOOR, _ITEM_SHARE * peak)))


def _item_region(score: np.ndarray) -> np.ndarray | None:
    """The item on the low-resolution copy: the largest region above :data:`_ITEM_SHARE` of the score's robust
    peak (and its parts close by), grown into the fainter regions touching it (:func:`_faint_parts`), holes filled;
    None when nothing stands out of the backdrop."""
    from scipy import ndimage

    peak = _peak(score)
    if not _stands_out(score, peak):
        return None
    strong = score > max(_SCORE_FLOOR, _ITEM_SHARE * peak)
    labels, n = ndimage.label(strong)  # n >= 1: _stands_out saw pixels above this
    sizes = ndimage.sum_labels(strong, labels, index=np.arange(1, n + 1))
    item = labels == 1 + int(np.argmax(sizes))
    # A sandal's straps or a bag's handle may be separate at this resolution; a pen beside the item is farther away.
    near = ndimage.binary_dilation(item, iterations=3)
    item |= np.isin(labels, np.unique(labels[near & strong]))
    texture = _TEXTURE_MARGIN * float(np.percentile(_border(score), 99))
    item |= _faint_parts(score, item, max(_SCORE_FLOOR, _ITEM_GROW * peak, texture))
    return ndimage.binary_fill_holes(item)


def _refine(feats: np.ndarray, item: np.ndarray, rounds: int = 2) -> np.ndarray:
    """GrabCut-like refinement of a silhouette (``_SEGMENTER = "refined"``): a Gaussian per side (item, backdrop)
    on the features, each pixel given to the likelier side, smoothed with its neighbours (mean field), twice."""
    from scipy import ndimage

    x = feats.reshape(len(feats), -1).T.astype(np.float64)
    q = item.ravel().astype(np.float64)
    for _ in range(rounds):
        loglik = []
        for weight in (q, 1.0 - q):
            total = max(float(weight.sum()), 1.0)
            mu = (weight[:, None] * x).sum(axis=0) / total
            var = (weight[:, None] * (x - mu) ** 2).sum(axis=0) / total + _FEATURE_FLOOR[: x.shape[1]] ** 2
            loglik.append(-0.5 * np.sum((x - mu) ** 2 / var + np.log(var), axis=1) + np.log(total / len(q)))
        llr = (loglik[0] - loglik[1]).reshape(item.shape)
        neighbours = ndimage.uniform_filter(q.reshape(item.shape), 3, mode="nearest")
        q = (1.0 / (1.0 + np.exp(-np.clip(llr + 4.0 * (2.0 * neighbours - 1.0), -30, 30)))).ravel()
    refined = (q > 0.5).reshape(item.shape)
    labels, n = ndimage.label(refined)
    if n == 0:
        return item
    overlap = ndimage.sum_labels(item, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(overlap)))


def _surface_box(coef: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The fitted backdrop surface of a ``shape`` image, evaluated on ``box`` only."""
    h, w = shape
    top, bottom, left, right = box
    row = np.linspace(-1, 1, h, dtype=np.float32)[top:bottom, None]
    col = np.linspace(-1, 1, w, dtype=np.float32)[None, left:right]
    c = coef.astype(np.float32)
    return c[0] + c[1] * col + c[2] * row + c[3] * col * col + c[4] * col * row + c[5] * row * row


def low_res_view(
    gray: np.ndarray, colour: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """What the photo path looks for the item on: the :data:`_LOW_RES` copy of ``gray``, the coefficients and values
    of the backdrop surface fitted to it, and the copy's colour (None for a grey photo)."""
    small = _box_downsample(gray, _LOW_RES)
    coef = _fit_backdrop(small)
    surface = _eval_surface(coef, small.shape)
    return small, coef, surface, _small_rgb(colour, small.shape) if colour is not None else None


def _found_photo_to_model(gray: np.ndarray, colour: np.ndarray | None, zoom: bool = True) -> np.ndarray:
    small, coef, surface, rgb = low_res_view(gray, colour)
    feats = _features(small, surface, rgb)
    score = item_score(feats)
    if _SEGMENTER == "learned":  # the rule only says whether anything stands out; the network says where
        item = segmenter.item_mask(small, surface, rgb) if _stands_out(score, _peak(score)) else None
    else:
        item = _item_region(score)
    if item is None:  # nothing stands out: a blank shot stays (nearly) blank
        return _grey_photo_to_model(gray)
    if _SEGMENTER == "refined":
        item = _refine(feats, item)
    if _SEGMENTER != "learned":  # the network's silhouette is already at the low resolution's own scale
        item = _tighten(item, small, surface, colour)
    resid = small - surface
    darker = _darker(resid, item)
    # The box: the brightness rule's (item_box), on the item's darkness where the backdrop model says item and its
    # close surroundings, so a plain backdrop's item is framed as before and clutter or texture is left out.
    near = _grown(item, _NEAR)
    # The box sees the silhouette's core: the averaging of the features spreads its edge by a pixel.
    core = _grown(item, -1)
    value = near * np.maximum(_relative(small, surface, darker), _ITEM_PEDESTAL * core)
    box = _box_in(_item_parts(_smooth3(value)), gray.shape)
    closer = _zoomed(box, gray.shape) if zoom else None
    if closer is not None:
        rows, cols = slice(closer[0], closer[1]), slice(closer[2], closer[3])
        return _found_photo_to_model(gray[rows, cols], None if colour is None else colour[rows, cols], zoom=False)
    top, bottom, left, right = box
    crop, surf = gray[top:bottom, left:right].astype(np.float32), _surface_box(coef, gray.shape, box)
    inside = _upsampled(item, gray.shape, box)
    if _ITEM_WHITE > 0:
        img = _against_item_white(crop, surf, inside, _upsampled(core, gray.shape, box))
    else:  # the backdrop rule: darkness relative to the backdrop, in the silhouette and a band around it
        dark = _relative(crop, surf, darker)
        floor = float(np.percentile(_relative(small, surface, darker)[_ring(small.shape)], 90))
        pedestal = _ITEM_PEDESTAL * float(dark.max(initial=0)) * inside
        img = _upsampled(near, gray.shape, box) * np.maximum(dark - floor * (1.0 - inside), pedestal)
    return _frame(img, _found_contrast(score, resid))


def _zoomed(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The crop to look again on when the item's ``box`` is small in a ``shape`` photo (:data:`_ZOOM_BELOW`): the
    box with :data:`_ZOOM_MARGIN` of its size on every side, inside the photo; None when it is not small."""
    top, bottom, left, right = box
    h, w = shape
    if _ZOOM_BELOW <= 0 or max((bottom - top) / h, (right - left) / w) >= _ZOOM_BELOW:
        return None
    mh, mw = round(_ZOOM_MARGIN * (bottom - top)), round(_ZOOM_MARGIN * (right - left))
    return max(0, top - mh), min(h, bottom + mh), max(0, left - mw), min(w, right + mw)


def _against_item_white(crop: np.ndarray, surface: np.ndarray, inside: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The item's darkness inside its silhouette (``inside``, soft-edged) against the lighter of the backdrop
    ``surface`` and the item's own white (:data:`_ITEM_WHITE`), never below the pedestal. Where the item's white is
    the reference, its edge (blended with a darker backdrop) would look like a dark rim: there the silhouette is
    the ``core`` one, a low-resolution pixel in."""
    own = crop[inside > 0.5]
    white = _ITEM_WHITE * float(np.percentile(own, _ITEM_WHITE_PERCENTILE)) if own.size else 0.0
    dark = np.clip(1.0 - crop / np.maximum(np.maximum(surface, white), 1.0), 0.0, 1.0)
    inside = np.where(white > surface, core, inside)
    return inside * np.maximum(dark, _ITEM_PEDESTAL * float(dark.max(initial=0)))


def _tighten(item: np.ndarray, small: np.ndarray, surface: np.ndarray, colour: np.ndarray | None) -> np.ndarray:
    """The silhouette's edge at the low resolution's own scale: the features' averaging spreads an item by a pixel
    or two, which would frame it smaller than Fashion-MNIST does. Keeps the silhouette's pixels whose brightness or
    colour (averaged over 3 pixels, as :func:`item_box` smooths) stands out; holes filled. An item that differs from
    its backdrop by texture only keeps its silhouette as it is."""
    from scipy import ndimage

    fine = item_score(_features(small, surface, _small_rgb(colour, small.shape) if colour is not None else None, 3))
    tight = ndimage.binary_fill_holes(item & (fine > _SCORE_FLOOR))
    return tight if tight.sum() >= 0.5 * item.sum() else item


_NEAR = 2  # low-resolution pixels around the item's silhouette that still count (its soft edge, a strap)


def _grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` (shrunk for a negative number; unchanged where shrinking would empty it)."""
    from scipy import ndimage

    if pixels >= 0:
        return ndimage.binary_dilation(mask, iterations=pixels) if pixels else mask
    shrunk = ndimage.binary_erosion(mask, iterations=-pixels)
    return shrunk if shrunk.any() else mask


def _smooth3(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.uniform_filter(img.astype(np.float32), size=3, mode="nearest")


def _darker(resid: np.ndarray, item: np.ndarray) -> bool:
    """Whether the item is mostly darker than its backdrop (else lighter): :func:`_darkness`'s rule, with the
    noise measured on the border ring (backdrop) and the sums taken over the item."""
    tol = _noise_tolerance(_border(resid))
    inside = resid[item]
    return float(np.sum(np.clip(-inside - tol, 0.0, None))) >= float(np.sum(np.clip(inside - tol, 0.0, None)))


def _relative(img: np.ndarray, surface: np.ndarray, darker: bool) -> np.ndarray:
    """How much ``img`` stands out from the backdrop ``surface``, in [0, 1] (see :func:`item_darkness`)."""
    out = 1.0 - img / np.maximum(surface, 1.0) if darker else (img - surface) / np.maximum(255.0 - surface, 1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _upsampled(mask: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A low-resolution mask of a ``shape`` image, bilinearly resampled to ``box`` of it (float in [0, 1])."""
    h, w = shape
    sh, sw = mask.shape
    top, bottom, left, right = box
    # The mask's pixel grid in the box's coordinates: a pixel centre at (i + 0.5) * h / sh.
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    scale_y, scale_x = sh / h, sw / w
    data = (scale_x, 0.0, left * scale_x, 0.0, scale_y, top * scale_y)
    out = img.transform((right - left, bottom - top), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _found_contrast(score: np.ndarray, resid: np.ndarray) -> float:
    """Grey levels by which the item stands out: the brightness rule's, or (an item that differs by colour or
    texture) its score in units of the floor, so a same-brightness item is not dimmed as a blank shot."""
    return max(_contrast(resid), _MIN_CONTRAST * float(np.percentile(score, 99.5)) / (2.0 * _SCORE_FLOOR))


def _photo_to_model(gray: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
    if _SEGMENTER == "grey":
        return _grey_photo_to_model(gray)
    return _found_photo_to_model(gray, colour)


def _grey_photo_to_model(gray: np.ndarray) -> np.ndarray:
    """The photo path before issue 27 (``_SEGMENTER = "grey"``): the item is what is darker (or lighter) than the
    fitted backdrop's brightness, framed by :func:`item_box`."""
    coef, resid = _backdrop_fit(gray)  # once per photo: the darkness map and the contrast both use it
    darkness = _darkness(gray, coef, resid)
    top, bottom, left, right = item_box(darkness)
    crop = darkness[top:bottom, left:right]
    # The backdrop's leftover (texture, noise, JPEG) inside the crop: Fashion-MNIST's backdrop is exactly 0.
    floor = float(np.percentile(_border(darkness), 90))
    return _frame(np.clip(crop - floor, 0.0, None), _contrast(resid))


def _frame(img: np.ndarray, contrast: float) -> np.ndarray:
    """The item's crop (float, 0 = backdrop) -> 28x28 uint8 framed like Fashion-MNIST: centred in a square,
    resampled, stretched, sharpened; dimmed in proportion when it stands out by less than :data:`_MIN_CONTRAST`."""
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
    small = np.asarray(Image.fromarray(square, mode="F").resize((SIZE, SIZE), _RESAMPLE, reducing_gap=3.0))
    model = _sharpen(_stretch(small))
    gain = min(1.0, contrast / _MIN_CONTRAST)
    return model if gain >= 1.0 else np.round(model * gain).astype(np.uint8)


def _stretch(img: np.ndarray) -> np.ndarray:
    """Float image -> uint8 with its brightest pixel at 255 (Fashion-MNIST's items end up stretched so)."""
    img = np.clip(img, 0.0, None)
    peak = float(img.max())
    if peak <= 0:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.clip(np.round(img * (255.0 / peak)), 0, 255).astype(np.uint8)


def _sharpen(img: np.ndarray) -> np.ndarray:
    """Fashion-MNIST sharpened its 28x28 items (a Gaussian of radius 1); resampling a photo leaves them softer.
    An unsharp mask of radius 1 restores the look: +0.6 to +0.9 points on the validation photos, where a blur
    lost 3.4 (docs/training.md, sixth round)."""
    sharp = Image.fromarray(img, mode="L").filter(
        ImageFilter.UnsharpMask(radius=1, percent=_SHARPEN_PERCENT, threshold=0)
    )
    return _stretch(np.asarray(sharp, dtype=np.float32))


def preprocess_bytes(data: bytes, *, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None) -> np.ndarray:
    """Image bytes -> 28x28 uint8 model image. Raises :class:`ImageError` subclasses on bad input.

    ``budget``: what decoding may cost (one per request, shared by its images); default: one image's caps, no time
    limit. With a time limit, an image above :data:`INLINE_WORK` is decoded in the stoppable child process."""
    budget = budget if budget is not None else DecodeBudget()
    img, survey = open_image(data, max_pixels=max_pixels, budget=budget)
    remaining = budget.remaining_seconds()
    if remaining is not None and survey.work > INLINE_WORK:
        from data_processing.sandbox import shared_sandbox

        img.close()
        try:
            return shared_sandbox().preprocess(
                data, max_pixels=max_pixels, max_image_pixels=budget.max_image_pixels, timeout=remaining
            )
        except DecodeTimeExceeded:
            raise DecodeTimeExceeded(
                f"decoding this request took longer than its budget of {budget.max_seconds:g} s (stopped)"
            ) from None
    img = finish_decoding(img)
    budget.check_time()
    return preprocess_array(to_pixels(img))


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
