"""The learned item finder of the photo path: which low-resolution pixels of a photo are the item.

Usage: ``item_mask(small, surface, rgb)`` -> a boolean silhouette on the low-resolution copy (or None when no
pixel is likely enough to be the item); :func:`pixel_features` is what the network sees, and what
:mod:`model_training.segmenter_fit` fits it on.

A small per-pixel network (15 features -> 16 -> 16 -> 1, 545 weights) trained on composites: Fashion-MNIST training
items rendered by both photo renderers (plain backdrops and real surfaces with clutter, cut-offs and hand-held
framing), each photo's true silhouette the target. Its features are the colour path's (brightness against the
fitted backdrop, two chromaticities, the local spread of the brightness) at three scales, each standardised against
the photo's border ring, plus three of them as they are (so the colours of paper, tape and coins against a garment
can be learned) and the distance from the photo's centre. The hand-made rule it replaces thresholded one distance
from the backdrop at 40 % of its peak: a paper slip brighter than a garment of the surface's brightness took the
peak, and a textured surface's grout lines or grain crossed the threshold (docs/training.md, issue 27 third round).

Pure numpy at serving time (the weights are the generated module :mod:`data_processing.segmenter_weights`): no
TensorFlow in the photo path, and its cost is a few small matrix products per photo.
"""

from __future__ import annotations

import functools

import numpy as np

WINDOWS = (1, 3, 7)  # low-resolution pixels each feature is averaged over
# The least spread each feature is given on a backdrop (a plain one has almost none): relative brightness, the two
# chromaticities, the log of the local spread.
_FLOOR_BRIGHTNESS, _FLOOR_CHROMA, _FLOOR_SPREAD = 0.02, 0.01, 0.35
_RING = 0.08  # the border ring's width (share of each side): what "the backdrop" is measured on
_Z_SCALE = 10.0  # standardised features divided by this (and clipped at +-3): inputs of order 1
# The silhouette: pixels whose logit is above this. Chosen on 1,500 real-surface validation photos (and 400 plain
# ones) with the default run's champion: -1 (probability 0.27) 86.7 % against 85.7 at 0, 85.3 at -2, 82.6 at -3; a
# silhouette slightly fuller than the true one frames an item as Fashion-MNIST does.
THRESHOLD = -1.0
_NEAR = 3  # low-resolution pixels within which a separate part belongs to the item (a strap, a sandal's sole)
_ROWS_PER_PRODUCT = 1024  # below OpenBLAS's threading threshold: its idle threads would spin on two cores


def n_features() -> int:
    """How many features :func:`pixel_features` gives per pixel."""
    per_window = [3 if w == 1 else 4 for w in WINDOWS]
    return sum(per_window) + 3 + 1


def border_ring(shape: tuple[int, int], width: float = _RING) -> np.ndarray:
    """The pixels within ``width`` of each side (a share of it, at least one pixel) of a ``shape`` image: where the
    photo path measures what the backdrop looks like."""
    h, w = shape
    ring = np.zeros((h, w), dtype=bool)
    by, bx = max(1, round(width * h)), max(1, round(width * w))
    ring[:by], ring[-by:], ring[:, :bx], ring[:, -bx:] = True, True, True, True
    return ring


def pixel_features(small: np.ndarray, surface: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """(k, h, w) float32 features of a low-resolution grey copy ``small``, its fitted backdrop ``surface`` and its
    colour ``rgb`` (h, w, 3; None for a grey photo: chromaticities 0)."""
    from scipy import ndimage

    rel = small / np.maximum(surface, 1.0) - 1.0
    if rgb is not None:
        total = rgb.sum(axis=-1) + 30.0  # + 30: the chromaticity of near-black pixels is noise
        c1 = (rgb[..., 0] - rgb[..., 1]) / total
        c2 = (rgb[..., 0] + rgb[..., 1] - 2.0 * rgb[..., 2]) / total
    else:
        c1 = c2 = np.zeros_like(rel)
    maps: list[np.ndarray] = []
    floors: list[float] = []
    for window in WINDOWS:

        def smooth(img: np.ndarray, size: int = window) -> np.ndarray:
            return ndimage.uniform_filter(img, size, mode="nearest") if size > 1 else img

        mean = smooth(rel)
        maps += [mean, smooth(c1), smooth(c2)]
        floors += [_FLOOR_BRIGHTNESS, _FLOOR_CHROMA, _FLOOR_CHROMA]
        if window > 1:
            maps.append(0.5 * np.log(np.maximum(smooth(rel * rel) - mean * mean, 1e-6)))
            floors.append(_FLOOR_SPREAD)
    ring = border_ring(rel.shape)
    out = []
    for feature, least in zip(maps, floors, strict=True):
        ref = feature[ring]
        med = float(np.median(ref))
        spread = max(least, 1.4826 * float(np.median(np.abs(ref - med))))
        out.append(np.clip((feature - med) / spread, -3 * _Z_SCALE, 3 * _Z_SCALE) / _Z_SCALE)
    h, w = rel.shape
    rows = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    centre = np.sqrt(rows * rows + cols * cols) / np.sqrt(2.0)
    out += [maps[3], maps[4], maps[5], centre]  # the smallest window above 1 as it is: the colour of the thing
    return np.stack(out).astype(np.float32)


@functools.cache
def _layers() -> list[tuple[np.ndarray, np.ndarray]]:
    from data_processing import segmenter_weights

    return [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in segmenter_weights.LAYERS]


def item_logit(small: np.ndarray, surface: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """Per low-resolution pixel, the network's log-odds that it is the item."""
    feats = pixel_features(small, surface, rgb)
    k, h, w = feats.shape
    x = feats.reshape(k, -1).T
    layers = _layers()
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), _ROWS_PER_PRODUCT):
        hidden = x[start : start + _ROWS_PER_PRODUCT]
        for weight, bias in layers[:-1]:
            hidden = np.maximum(hidden @ weight + bias, 0.0)
        weight, bias = layers[-1]
        out[start : start + _ROWS_PER_PRODUCT] = (hidden @ weight + bias)[:, 0]
    return out.reshape(h, w)


def item_region(logit: np.ndarray) -> np.ndarray | None:
    """The item's silhouette from the network's logits: of the regions above :data:`THRESHOLD`, the one with the
    most probability mass, with the regions within :data:`_NEAR` pixels of it; holes filled. None when no pixel is
    above the threshold."""
    from scipy import ndimage

    strong = logit > THRESHOLD
    labels, n = ndimage.label(strong)
    if n == 0:
        return None
    prob = 1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0)))
    mass = ndimage.sum_labels(prob, labels, index=np.arange(1, n + 1))
    item = labels == 1 + int(np.argmax(mass))
    near = ndimage.binary_dilation(item, iterations=_NEAR)
    item |= np.isin(labels, np.unique(labels[near & strong]))
    return ndimage.binary_fill_holes(item)


def item_mask(small: np.ndarray, surface: np.ndarray, rgb: np.ndarray | None) -> np.ndarray | None:
    """The item's silhouette on the low-resolution copy (see :func:`item_region`)."""
    return item_region(item_logit(small, surface, rgb))
