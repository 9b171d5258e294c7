"""Things that are not one of the 10 classes, photographed as a warehouse would: the out-of-distribution benchmark.

Usage: ``render_unfamiliar(kind, seed)`` -> :class:`UnfamiliarPhoto` (JPEG bytes, the kind, what was drawn);
``KINDS`` lists the kinds. Pure and seeded like :mod:`data_processing.photos`: every photo has its own generator.

A shop for sustainable products gets back more than clothes. The kinds, each built from material available offline
(:mod:`data_processing.photo_sources` for the photographs, scikit-learn's bundled digits, Pillow's bundled font):

- ``object``: a photograph of something else, hand-held (a cup of coffee, a cat, an astronaut, a rocket on its
  pad, a man with a camera, a clock, coins, a horse silhouette): a crop of 55-100 %, turned up to +-15 degrees,
  keystoned, maybe blurred;
- ``empty``: the photo benchmark's own backdrops (white, grey, beige, coloured, wood, linen, cardboard, tiles) with
  no item on them (:func:`data_processing.photos.render_photo` of an empty image);
- ``texture``: a real surface (brick, grass, gravel, wood) with no item, and in a third of them some clutter (a pen,
  a paper slip, tape, a coin) (:func:`data_processing.real_photos.render_real_photo` of an empty image);
- ``paperwork``: a packing slip or letter: a page of printed lines, a heading, a table or a bar code, on a plain
  or real surface;
- ``digit``: a handwritten digit (scikit-learn's 8x8 digits, smoothed up) or a printed one, placed like an item;
- ``letter``: a printed letter (A-Z, a-z), placed like an item.

Digits and letters are drawn as a 28x28 "item" (light on black, as Fashion-MNIST stores its items) and go through
the photo renderers, on plain or real surfaces, so they look exactly as an item would.
"""

from __future__ import annotations

import io
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from data_processing.photo_sources import load_source
from data_processing.photos import _perspective_coeffs, render_photo
from data_processing.real_photos import draw_real_params, render_real_photo, surface_rgb

UNFAMILIAR_VERSION = 1  # bump when the rendering changes: cached sets are keyed by it
KINDS = ("object", "empty", "texture", "paperwork", "digit", "letter")
OBJECTS = ("coffee", "chelsea", "astronaut", "rocket", "camera", "clock", "coins", "horse")
WORKING_SIDE = 384
_WORDS = (
    "order",
    "return",
    "invoice",
    "item",
    "qty",
    "price",
    "total",
    "shipping",
    "address",
    "customer",
    "reference",
    "date",
    "refund",
    "reason",
    "size",
    "colour",
    "delivered",
    "packed",
    "signature",
    "warehouse",
    "parcel",
    "tracking",
    "account",
    "number",
    "sustainable",
    "organic",
    "cotton",
    "thank",
    "you",
)


@dataclass(frozen=True)
class UnfamiliarPhoto:
    data: bytes  # a JPEG file
    kind: str
    detail: str  # which object, surface, digit or letter


def _frame_size(rng: np.random.Generator) -> tuple[int, int]:
    side = rng.uniform(300, 1600)
    aspect = (4 / 3, 3 / 2, 16 / 9, 1.0)[rng.integers(4)]
    if rng.random() < 0.5:
        aspect = 1 / aspect
    return (round(side), round(side / aspect)) if aspect >= 1 else (round(side * aspect), round(side))


def _photograph(scene: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> bytes:
    """Light, noise, maybe blur, the photo's size and JPEG: what the camera adds to any scene."""
    rgb = np.asarray(scene.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    u = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    v = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (u * np.cos(theta) + v * np.sin(theta)) / math.sqrt(0.5), 0, 1)
    light = (1.0 - rng.uniform(0, 0.3) * ramp) * (1.0 - rng.uniform(0, 0.25) * 2 * (u * u + v * v))
    rgb = rgb * light[..., None] + rng.uniform(0.5, 4.0) * rng.standard_normal((h, w, 1), dtype=np.float32)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(40, 92)))
    return buf.getvalue()


def _working(size: tuple[int, int]) -> tuple[int, int]:
    s = min(1.0, WORKING_SIDE / max(size))
    return max(8, round(size[0] * s)), max(8, round(size[1] * s))


def _handheld(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` turned (+-15 degrees) and keystoned (up to 12 %), as a hand-held phone sees it (same size)."""
    w, h = img.size
    img = img.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR)
    k = float(rng.uniform(-0.12, 0.12)) * w / 2
    coeffs = _perspective_coeffs([(0, 0), (w, 0), (w, h), (0, h)], [(-k, 0), (w + k, 0), (w, h), (0, h)])
    return img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)


def _object_photo(rng: np.random.Generator) -> tuple[bytes, str]:
    name = OBJECTS[rng.integers(len(OBJECTS))]
    src = load_source(name)
    if src.ndim == 2:
        src = np.stack([src] * 3, axis=-1)
    sh, sw = src.shape[:2]
    size = _frame_size(rng)
    w, h = _working(size)
    scale = rng.uniform(0.55, 1.0) * min(sh / h, sw / w)
    ch, cw = max(8, min(sh, round(h * scale))), max(8, min(sw, round(w * scale)))
    top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    big = (round(w * 1.3), round(h * 1.3))
    crop = Image.fromarray(np.ascontiguousarray(src[top : top + ch, left : left + cw])).resize(big)
    # Turned and keystoned, then cropped back to the frame: the phone sees only the object's photograph.
    turned = _handheld(crop, rng)
    bw, bh = turned.size
    scene = turned.crop(((bw - w) // 2, (bh - h) // 2, (bw - w) // 2 + w, (bh - h) // 2 + h))
    return _photograph(scene, size, rng), name


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _page(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A printed page (packing slip, letter, label) of ``w`` x ``h`` px: heading, lines of words, maybe a table and
    a bar code."""
    paper = tuple(int(c) for c in rng.uniform(228, 255, 3))
    page = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(page)
    ink = tuple(int(c) for c in rng.uniform(0, 60, 3))
    margin = round(w * rng.uniform(0.06, 0.12))
    y = margin
    draw.text((margin, y), " ".join(rng.choice(_WORDS, 2)).upper(), fill=ink, font=_font(max(8, h // 14)))
    y += h // 9
    size = max(6, round(h * rng.uniform(0.025, 0.05)))
    table = rng.random() < 0.4
    while y < h - margin - size:
        words = " ".join(rng.choice(_WORDS, int(rng.integers(2, 9))))
        draw.text((margin, y), words, fill=ink, font=_font(size))
        if table:
            draw.line([(margin, y + size + 2), (w - margin, y + size + 2)], fill=ink, width=1)
        y += round(size * rng.uniform(1.3, 1.9))
    if rng.random() < 0.5:  # a bar code in a corner
        x, bw = w - margin - w // 3, max(1, w // 150)
        while x < w - margin:
            width = bw * int(rng.integers(1, 4))
            if rng.random() < 0.55:
                draw.rectangle([x, h - margin - h // 10, x + width - 1, h - margin], fill=ink)
            x += width
    return page


def _paper_photo(rng: np.random.Generator) -> tuple[bytes, str]:
    size = _frame_size(rng)
    w, h = _working(size)
    if rng.random() < 0.5:  # a real surface, coloured as the real-surface slice colours it
        params = draw_real_params(np.random.default_rng(rng.integers(2**32)))
        surface = params.surface
        back = Image.fromarray(np.clip(surface_rgb(params, rng, h, w), 0, 255).astype(np.uint8), mode="RGB")
    else:
        surface = "plain"
        back = Image.new("RGB", (w, h), tuple(int(c) for c in rng.uniform(120, 250) + rng.uniform(-10, 10, 3)))
    side = rng.uniform(0.45, 0.95) * min(w, h)
    ph, pw = round(side), round(side / math.sqrt(2)) if rng.random() < 0.7 else round(side * 0.8)
    page = _page(rng, max(16, pw), max(16, ph)).convert("RGBA")
    page = page.rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR, expand=True)
    left = int(rng.uniform(-0.1, 0.6) * (w - page.width // 2))
    top = int(rng.uniform(-0.1, 0.6) * (h - page.height // 2))
    shadow = Image.new("RGBA", page.size, (0, 0, 0, 60))
    back.paste(shadow, (left + 4, top + 4), page.getchannel("A"))
    back.paste(page, (left, top), page)
    return _photograph(back, size, rng), surface


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target


def _as_item(glyph: np.ndarray) -> np.ndarray:
    """A glyph (ink = high) -> a 28x28 uint8 "item" (light on black, longest side 20-26 px, centred)."""
    rows, cols = np.flatnonzero(glyph.max(axis=1) > 0.1), np.flatnonzero(glyph.max(axis=0) > 0.1)
    glyph = glyph[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if len(rows) else glyph
    gh, gw = glyph.shape
    scale = 24.0 / max(gh, gw)
    size = (max(1, round(gw * scale)), max(1, round(gh * scale)))
    img = np.asarray(Image.fromarray(glyph.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC))
    out = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    out[top : top + size[1], left : left + size[0]] = img
    return np.clip(out / max(float(out.max()), 1e-6) * 255, 0, 255).astype(np.uint8)


def _printed(char: str, rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(img).text((10, 0), char, fill=255, font=_font(int(rng.integers(60, 84))))
    return np.asarray(img, dtype=np.float32) / 255.0


def _glyph_photo(kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    if kind == "digit" and rng.random() < 0.6:
        images, targets = _digits()
        i = int(rng.integers(len(images)))
        glyph, detail = images[i] / 16.0, f"handwritten {targets[i]}"
    else:
        chars = string.digits if kind == "digit" else string.ascii_letters
        char = chars[rng.integers(len(chars))]
        glyph, detail = _printed(char, rng), f"printed {char}"
    item = _as_item(glyph)
    seed = tuple(int(s) for s in rng.integers(2**31, size=3))
    photo = render_real_photo(item, seed) if rng.random() < 0.5 else render_photo(item, seed)
    return photo.data, detail


def render_unfamiliar(kind: str, seed: int | Sequence[int]) -> UnfamiliarPhoto:
    """One photo of ``kind`` (one of :data:`KINDS`), seeded."""
    rng = np.random.default_rng(seed)
    empty = np.zeros((28, 28), dtype=np.uint8)
    if kind == "object":
        data, detail = _object_photo(rng)
    elif kind == "empty":
        photo = render_photo(empty, tuple(int(s) for s in rng.integers(2**31, size=3)))
        data, detail = photo.data, photo.params.texture or photo.params.backdrop
    elif kind == "texture":
        seed3 = tuple(int(s) for s in rng.integers(2**31, size=3))
        photo = render_real_photo(empty, seed3)
        data, detail = photo.data, photo.params.surface + (" + clutter" if photo.params.clutter else "")
    elif kind == "paperwork":
        data, detail = _paper_photo(rng)
    elif kind in ("digit", "letter"):
        data, detail = _glyph_photo(kind, rng)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    return UnfamiliarPhoto(data, kind, detail)
