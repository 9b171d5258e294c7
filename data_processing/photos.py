"""Fashion-MNIST items rendered as the photos a warehouse takes: pure, seeded functions (no I/O).

Usage: ``render_photo(image28, seed)`` -> :class:`Photo` (JPEG bytes + the parameters drawn for it);
``render_set(images, labels, seed=..., per_class=...)`` renders a stratified, seeded subset.

The model of a photo. A Fashion-MNIST pixel ``v`` (0 = backdrop, 255 = darkest part of the item) is how dark the
item is there on the white backdrop of the original product photo. The renderer puts that item back into a
scene: the item's reflectance is ``base * (1 - k * v / 255)``, where ``base`` is the backdrop's mean colour times a
colour tint (a coloured item) and ``k`` its contrast (``k`` near 1 a dark item, 0.3-0.6 a light item that barely
stands out); outside the item the backdrop's own reflectance (white, grey, beige, coloured, or textured: wood,
linen, cardboard, tiles). The item is never lighter than its backdrop, so "how dark, relative to the backdrop"
stays well defined and the label stays recoverable. The scene is lit unevenly (a linear gradient and a vignette),
the item casts a soft shadow, is scaled (35-85 % of the photo's shorter side), rotated up to +-10 degrees, mildly
keystoned (perspective), placed off-centre and sometimes partly outside the frame, then the photo gets camera
noise, a size of 0.3-12 megapixels in a 4:3, 3:2, 16:9 or square frame, portrait or landscape, JPEG quality
50-95, and sometimes an EXIF orientation (the pixels stored rotated, the tag saying how to show them).

Cost: the scene is composed at a working resolution (longest side <= 640 px) and only resized to the final
size before JPEG encoding, so a photo costs ~10-200 ms depending on its megapixels (the encoder dominates).
Every photo has its own generator seeded by ``(seed, index)``, so any subset renders identically in any order
or process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

RENDERER_VERSION = 1  # bump when the rendering changes: cached photo sets are keyed by it
WORKING_SIDE = 384  # longest side of the scene while it is composed (the item gets >= 100 px of it)
BACKDROPS = ("white", "grey", "beige", "coloured", "textured")
_BACKDROP_P = (0.3, 0.15, 0.15, 0.2, 0.2)
TEXTURES = ("wood", "linen", "cardboard", "tiles")
_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0)
_EXIF_ORIENTATION = 0x0112
_OPAQUE_FROM = 40  # Fashion-MNIST value from which an item pixel fully covers the backdrop
# Pixels stored for an EXIF orientation so that ImageOps.exif_transpose shows the upright scene.
_STORE_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class PhotoParams:
    """Everything drawn for one photo (logged with benchmark failures, used for per-kind breakdowns)."""

    width: int
    height: int
    backdrop: str
    texture: str  # "" unless backdrop == "textured"
    backdrop_rgb: tuple[int, int, int]
    item_tone: str  # "dark" or "light"
    contrast: float  # k: darkness of the item's darkest part relative to the backdrop
    tint_rgb: tuple[float, float, float]
    fill: float  # the item's longest side / the photo's shorter side
    centre: tuple[float, float]  # item centre, fractions of (width, height)
    cut: bool  # placed partly outside the frame
    angle: float  # degrees, counter-clockwise
    keystone: float  # perspective: relative shrink of the item's top (>0) or bottom (<0) edge
    light_gradient: float  # darkest/brightest illumination ratio is 1 - this
    vignette: float
    shadow: float  # 0 = none, else darkness of the shadow's core
    noise: float  # camera noise sigma (0-255 scale, at the working resolution)
    quality: int
    exif_orientation: int  # 1 = none

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass(frozen=True)
class Photo:
    data: bytes  # a JPEG file
    params: PhotoParams


def draw_params(rng: np.random.Generator) -> PhotoParams:
    """The random choices for one photo."""
    mp = math.exp(rng.uniform(math.log(0.3), math.log(12.0)))
    aspect = _ASPECTS[rng.integers(len(_ASPECTS))]
    if rng.random() < 0.5:
        aspect = 1 / aspect  # portrait
    width = max(16, round(math.sqrt(mp * 1e6 * aspect)))
    height = max(16, round(width / aspect))
    backdrop = BACKDROPS[rng.choice(len(BACKDROPS), p=_BACKDROP_P)]
    texture = TEXTURES[rng.integers(len(TEXTURES))] if backdrop == "textured" else ""
    if backdrop == "white":
        rgb = np.full(3, rng.uniform(232, 255)) + rng.uniform(-4, 4, 3)
    elif backdrop == "grey":
        rgb = np.full(3, rng.uniform(150, 215)) + rng.uniform(-3, 3, 3)
    elif backdrop == "beige":
        rgb = np.array([rng.uniform(215, 245), rng.uniform(195, 225), rng.uniform(150, 195)])
    elif backdrop == "coloured":  # pastel paper or fabric: a random hue, light
        hue = rng.uniform(0, 1)
        rgb = 255 * np.array(_hsv_to_rgb(hue, rng.uniform(0.15, 0.45), rng.uniform(0.72, 0.95)))
    else:  # wood, linen, cardboard, tiles: a light-to-mid base colour, the pattern comes later
        rgb = {
            "wood": np.array([rng.uniform(190, 225), rng.uniform(150, 185), rng.uniform(105, 140)]),
            "linen": np.full(3, rng.uniform(200, 240)) + np.array([4.0, 2.0, -6.0]),
            "cardboard": np.array([rng.uniform(180, 210), rng.uniform(150, 175), rng.uniform(110, 135)]),
            "tiles": np.full(3, rng.uniform(200, 245)),
        }[texture]
    light_item = rng.random() < 0.3
    contrast = rng.uniform(0.3, 0.6) if light_item else rng.uniform(0.7, 1.0)
    if rng.random() < 0.5:  # a coloured item: per-channel tint, luminance kept near 1
        tint = 1.0 - rng.uniform(0.0, 0.5, 3)
        tint = tint / max(float(_luma(tint)), 1e-3)
        tint = np.clip(tint / max(1.0, float(tint.max())), 0.0, 1.0)
    else:
        tint = np.ones(3)
    fill = rng.uniform(0.35, 0.85)
    short = min(width, height)
    ex, ey = fill * short / width, fill * short / height  # the item's extent as fractions of each side
    cx = 0.5 + rng.uniform(-1, 1) * 0.8 * max(0.0, 1 - ex) / 2  # off-centre but inside the frame
    cy = 0.5 + rng.uniform(-1, 1) * 0.8 * max(0.0, 1 - ey) / 2
    cut = rng.random() < 0.1
    if cut:  # 5-20 % of the item's extent beyond one edge
        out = rng.uniform(0.05, 0.2)
        side = int(rng.integers(4))
        if side < 2:
            cx = ex / 2 - out * ex if side == 0 else 1 - ex / 2 + out * ex
        else:
            cy = ey / 2 - out * ey if side == 2 else 1 - ey / 2 + out * ey
    exif = int(rng.choice([1, 3, 6, 8], p=[0.8, 0.04, 0.08, 0.08]))
    return PhotoParams(
        width=int(width),
        height=int(height),
        backdrop=backdrop,
        texture=texture,
        backdrop_rgb=tuple(int(c) for c in np.clip(np.round(rgb), 0, 255)),
        item_tone="light" if light_item else "dark",
        contrast=round(float(contrast), 4),
        tint_rgb=tuple(round(float(c), 4) for c in tint),
        fill=round(float(fill), 4),
        centre=(round(float(cx), 4), round(float(cy), 4)),
        cut=bool(cut),
        angle=round(float(rng.uniform(-10, 10)), 3),
        keystone=round(float(rng.uniform(-0.08, 0.08)), 4),
        light_gradient=round(float(rng.uniform(0.0, 0.35)), 4),
        vignette=round(float(rng.uniform(0.0, 0.25)), 4),
        shadow=round(float(rng.uniform(0.08, 0.3)), 4) if rng.random() < 0.6 else 0.0,
        noise=round(float(rng.uniform(0.5, 4.0)), 3),
        quality=int(rng.integers(50, 96)),
        exif_orientation=exif,
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, the weights Pillow's ``convert("L")`` uses."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with about ``cells`` blobs across the longer side (bicubic-upscaled)."""
    ch, cw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    small = Image.fromarray(rng.standard_normal((ch, cw)).astype(np.float32), mode="F")
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _backdrop(p: PhotoParams, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) pattern of the backdrop's reflectance around its colour (1 = exactly ``backdrop_rgb``)."""
    pattern = 1.0 + 0.01 * _smooth_noise(rng, h, w, 6)  # every backdrop is slightly uneven
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]  # broadcast
    if p.texture == "wood":
        theta = rng.uniform(0, np.pi)
        t = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
        warp = 0.03 * _smooth_noise(rng, h, w, 4)
        grain = np.sin(2 * np.pi * (rng.uniform(8, 25) * (t + warp)))
        pattern = pattern + rng.uniform(0.04, 0.1) * grain + 0.02 * _smooth_noise(rng, h, w, 40)
    elif p.texture == "linen":
        pattern = pattern + rng.uniform(0.02, 0.06) * rng.standard_normal((h, w)).astype(np.float32)
        period = rng.uniform(3, 7)
        pattern = pattern + 0.02 * (np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    elif p.texture == "cardboard":
        pattern = pattern + rng.uniform(0.03, 0.07) * _smooth_noise(rng, h, w, 25)
        pattern = pattern + 0.015 * rng.standard_normal((h, w)).astype(np.float32)
    elif p.texture == "tiles":
        period = max(h, w) / rng.uniform(3, 7)
        ox, oy = rng.uniform(0, period, 2)
        grout = (np.abs(((xx + ox) % period) - period / 2) > period / 2 - 2.0) | (
            np.abs(((yy + oy) % period) - period / 2) > period / 2 - 2.0
        )
        pattern = pattern - rng.uniform(0.05, 0.15) * grout
    return pattern.astype(np.float32)


def _item_layer(image: np.ndarray, p: PhotoParams, size: int) -> tuple[Image.Image, Image.Image]:
    """The item's darkness ``v/255`` and coverage (alpha), scaled so the item's longest side is ``size`` px,
    keystoned and rotated; both as float Pillow images of the same size."""
    v = np.asarray(image, dtype=np.float32) / 255.0
    rows, cols = np.flatnonzero(v.any(axis=1)), np.flatnonzero(v.any(axis=0))
    if len(rows):
        v = v[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = v.shape
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    pad = 2  # a ring of backdrop so the bicubic kernel and the rotation have room
    padded = np.pad(v, pad)
    big_size = (tw + round(2 * pad * scale), th + round(2 * pad * scale))
    dark = Image.fromarray(padded, mode="F").resize(big_size, Image.Resampling.BICUBIC)
    # Coverage: opaque where the item is visibly dark, fading out over its faintest pixels, so the isolated
    # faint specks around some Fashion-MNIST items do not become opaque flecks of item colour.
    coverage = np.clip(padded * (255.0 / _OPAQUE_FROM), 0.0, 1.0)
    alpha = Image.fromarray(coverage, mode="F").resize(big_size, Image.Resampling.BILINEAR)
    if p.keystone:
        bw, bh = big_size
        k = abs(p.keystone) * bw / 2
        # PERSPECTIVE maps output (x, y) to input; shrinking the top edge = sampling wider at the top.
        top, bottom = ((-k, bw + k), (0.0, float(bw))) if p.keystone > 0 else ((0.0, float(bw)), (-k, bw + k))
        coeffs = _perspective_coeffs(
            [(0, 0), (bw, 0), (bw, bh), (0, bh)],
            [(top[0], 0), (top[1], 0), (bottom[1], bh), (bottom[0], bh)],
        )
        dark = dark.transform(big_size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        alpha = alpha.transform(big_size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    dark = dark.rotate(p.angle, Image.Resampling.BILINEAR, expand=True)
    alpha = alpha.rotate(p.angle, Image.Resampling.BILINEAR, expand=True)
    return dark, alpha


def _perspective_coeffs(out_pts: Sequence[tuple[float, float]], in_pts: Sequence[tuple[float, float]]) -> list:
    """Pillow's 8 PERSPECTIVE coefficients mapping output points to input points."""
    a, b = [], []
    for (x, y), (u, v) in zip(out_pts, in_pts, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).tolist()


def _paste(canvas_h: int, canvas_w: int, layer: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """``layer`` centred at pixel (cx, cy) on a zero (canvas_h, canvas_w) array, clipped at the edges."""
    out = np.zeros((canvas_h, canvas_w), dtype=np.float32)
    lh, lw = layer.shape
    top, left = round(cy - lh / 2), round(cx - lw / 2)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + lh, canvas_h), min(left + lw, canvas_w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = layer[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def scene_size(p: PhotoParams | Any, working_side: int = WORKING_SIDE) -> tuple[int, int]:
    """(width, height) of the scene a photo of ``p`` is composed at (its longest side at most ``working_side``)."""
    s = min(1.0, working_side / max(p.width, p.height))
    return max(8, round(p.width * s)), max(8, round(p.height * s))


def item_coverage(image: np.ndarray, p: PhotoParams | Any, working_side: int = WORKING_SIDE) -> np.ndarray:
    """The item's coverage (0-1, (h, w)) in the upright scene, where the scene's composer places it: the true
    silhouette a segmenter is fitted to (model_training.segmenter_fit). Either renderer's parameters."""
    w, h = scene_size(p, working_side)
    _, alpha = _item_layer(image, p, max(4, round(p.fill * min(w, h))))
    return np.clip(_paste(h, w, np.asarray(alpha), p.centre[0] * w, p.centre[1] * h), 0.0, 1.0)


def compose_scene(image: np.ndarray, p: PhotoParams, rng: np.random.Generator) -> Image.Image:
    """The upright RGB scene at the working resolution (longest side <= WORKING_SIDE)."""
    w, h = scene_size(p)
    back = _backdrop(p, rng, h, w)
    dark, alpha = _item_layer(image, p, max(4, round(p.fill * min(w, h))))
    cx, cy = p.centre[0] * w, p.centre[1] * h
    a = np.clip(_paste(h, w, np.asarray(alpha), cx, cy), 0.0, 1.0)
    d = np.clip(_paste(h, w, np.asarray(dark), cx, cy), 0.0, 1.0)
    if p.shadow > 0:
        size = p.fill * min(w, h)
        dx, dy = rng.uniform(0.02, 0.07, 2) * size * rng.choice([-1, 1], 2)
        cast = np.clip(_paste(h, w, np.asarray(alpha), cx + dx, cy + dy), 0.0, 1.0)
        soft = Image.fromarray(np.round(cast * 255).astype(np.uint8), mode="L")  # Pillow blurs 8-bit images only
        soft = soft.filter(ImageFilter.GaussianBlur(max(1.0, float(rng.uniform(0.02, 0.06)) * size)))
        back = back * (1.0 - (p.shadow / 255.0) * np.asarray(soft, dtype=np.float32))
    u = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]  # broadcast, not (h, w) grids
    v = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = 0.5 + (u * np.cos(theta) + v * np.sin(theta)) / math.sqrt(0.5)  # 0..1 across the frame
    light = (1.0 - p.light_gradient * np.clip(ramp, 0, 1)) * (1.0 - p.vignette * 2 * (u * u + v * v))
    # Scalar maps first, colour last: backdrop and item each scale one RGB colour (two (h, w, 3) passes, not ten).
    back_rgb = np.asarray(p.backdrop_rgb, dtype=np.float32)
    item_rgb = back_rgb * np.asarray(p.tint_rgb, dtype=np.float32)
    on_back = light * (1.0 - a) * back
    on_item = light * a * (1.0 - p.contrast * d)
    rgb = on_back[..., None] * back_rgb + on_item[..., None] * item_rgb
    rgb += p.noise * rng.standard_normal((h, w, 1), dtype=np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def render_photo(image: np.ndarray, seed: int | Sequence[int]) -> Photo:
    """One 28x28 Fashion-MNIST image (uint8, light item on black) -> a warehouse photo as JPEG bytes."""
    rng = np.random.default_rng(seed)
    return render_with(image, draw_params(rng), rng)


def render_with(image: np.ndarray, p: PhotoParams, rng: np.random.Generator) -> Photo:
    """The photo of ``image`` under the given parameters (``rng`` draws the details: texture, noise, shadow)."""
    scene = compose_scene(image, p, rng)
    if scene.size != (p.width, p.height):
        # Bilinear: upscaling to 12 megapixels dominated the cost with bicubic (and a phone photo is soft).
        scene = scene.resize((p.width, p.height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    save: dict = {"format": "JPEG", "quality": p.quality}
    if p.exif_orientation != 1:
        scene = scene.transpose(_STORE_TRANSPOSE[p.exif_orientation])
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = p.exif_orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    scene.save(buf, **save)
    return Photo(buf.getvalue(), p)


def params_dict(p: PhotoParams) -> dict:
    """A flat JSON-ready dict of the parameters (and the megapixels)."""
    return {**asdict(p), "megapixels": round(p.megapixels, 3)}
