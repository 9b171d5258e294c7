"""Synthetic distribution shifts of model images, for measuring the drift detector (pure functions).

Every generator takes (N, 28, 28) model images (uint8 from preprocessing, or float in [0, 1]) and returns
uint8 images of the same shape: the shift is applied in [0, 1], clipped, and rounded back to what the
preprocessing step would hand the model. Randomness comes only from the ``rng`` argument.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIZE = 28


def to_unit(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected images of shape (N, {SIZE}, {SIZE}), got {x.shape}")
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def brightness(images: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` (in [0, 1] pixel units, either sign) to every pixel."""
    return to_uint8(to_unit(images) + delta)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's deviations from its own mean by ``factor`` (like PIL's/torchvision's contrast)."""
    x = to_unit(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return to_uint8(mean + (x - mean) * factor)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (each image separately)."""
    return to_uint8(ndimage.gaussian_filter(to_unit(images), sigma=(0.0, sigma, sigma), mode="constant"))


def gaussian_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive pixel noise N(0, sigma^2), clipped to [0, 1]."""
    x = to_unit(images)
    return to_uint8(x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32))


def rotation(images: np.ndarray, degrees: float, rng: np.random.Generator, *, uniform: bool = False) -> np.ndarray:
    """Rotate each image about its centre by a random ``±degrees`` (random sign), or, with ``uniform``, by an
    angle drawn uniformly from ``[-degrees, degrees]``. Bilinear, black fill outside the frame."""
    x = to_unit(images)
    n = x.shape[0]
    angles = rng.uniform(-degrees, degrees, size=n) if uniform else rng.choice([-degrees, degrees], size=n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = ndimage.rotate(x[i], float(angles[i]), reshape=False, order=1, mode="constant", cval=0.0)
    return to_uint8(out)


def invert(images: np.ndarray) -> np.ndarray:
    """Inverted polarity (dark item on a light background): 1 - x."""
    return to_uint8(1.0 - to_unit(images))


def mix(
    clean: np.ndarray, shifted: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``round(fraction * N)`` randomly chosen items of ``clean`` by items of ``shifted`` (drawn without
    replacement). Returns (mixed images, boolean mask of the replaced positions). Works on any per-item arrays."""
    n = clean.shape[0]
    k = round(fraction * n)
    pos = rng.choice(n, size=k, replace=False)
    src = rng.choice(shifted.shape[0], size=k, replace=False)
    out = np.array(clean, copy=True)
    out[pos] = shifted[src]
    mask = np.zeros(n, dtype=bool)
    mask[pos] = True
    return out, mask


# --- out-of-distribution items: shapes and digits drawn by code --------------------------------------------

# Seven-segment layout on a 5 x 9 grid: (row0, col0, row1, col1) for segments a..g.
_SEGMENTS = {
    "a": (0, 0, 0, 4),
    "b": (0, 4, 4, 4),
    "c": (4, 4, 8, 4),
    "d": (8, 0, 8, 4),
    "e": (4, 0, 8, 0),
    "f": (0, 0, 4, 0),
    "g": (4, 0, 4, 4),
}
_DIGITS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]


def _draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(img)
    level = int(rng.integers(140, 256))
    width = int(rng.integers(1, 4))
    cx, cy = rng.integers(9, 19, size=2)
    r = int(rng.integers(5, 12))
    box = [int(cx - r), int(cy - r), int(cx + r), int(cy + r)]
    if kind == "disc":
        d.ellipse(box, fill=level)
    elif kind == "ring":
        d.ellipse(box, outline=level, width=width)
    elif kind == "square":
        d.rectangle(box, outline=level, width=width)
    elif kind == "triangle":
        d.polygon([(box[0], box[3]), (box[2], box[3]), (int(cx), box[1])], fill=level)
    elif kind == "cross":
        d.line([(box[0], box[1]), (box[2], box[3])], fill=level, width=width + 1)
        d.line([(box[0], box[3]), (box[2], box[1])], fill=level, width=width + 1)
    elif kind == "digit":
        digit = _DIGITS[int(rng.integers(0, 10))]
        scale = float(rng.uniform(1.6, 2.4))
        ox, oy = int(rng.integers(6, 12)), int(rng.integers(3, 7))
        for seg in digit:
            r0, c0, r1, c1 = _SEGMENTS[seg]
            d.line(
                [(ox + c0 * scale, oy + r0 * scale), (ox + c1 * scale, oy + r1 * scale)],
                fill=level,
                width=width + 1,
            )
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.asarray(img, dtype=np.uint8)


OOD_KINDS = ("disc", "ring", "square", "triangle", "cross", "digit")


def ood_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` out-of-distribution model images: random shapes and seven-segment digits, not clothing."""
    kinds = rng.choice(len(OOD_KINDS), size=n)
    if n == 0:
        return np.zeros((0, SIZE, SIZE), dtype=np.uint8)
    return np.stack([_draw(OOD_KINDS[k], rng) for k in kinds])


def class_subset_indices(
    labels: np.ndarray, n: int, rng: np.random.Generator, *, n_classes: int = 3, num_classes: int = 10
) -> np.ndarray:
    """Indices of a class-prior shift: ``n`` items drawn (without replacement) only from ``n_classes`` randomly
    chosen true classes."""
    chosen = rng.choice(num_classes, size=n_classes, replace=False)
    pool = np.flatnonzero(np.isin(labels, chosen))
    return rng.choice(pool, size=n, replace=n > pool.size)
