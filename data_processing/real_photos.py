"""Fashion-MNIST items rendered on surfaces from real photographs, as a phone held by hand takes them.

Usage: ``render_real_photo(image28, seed)`` -> :class:`~data_processing.photos.Photo` (JPEG bytes + the
:class:`RealPhotoParams` drawn for it); pure and seeded like :mod:`data_processing.photos`, whose item layer, shadow
and lighting it shares.

The harder slice of the photo benchmark (``photo_real_*``). What differs from the plain renderer:

- **surface**: a crop (rotated by a multiple of 90 degrees, maybe mirrored, 35-100 % of the source's shorter side)
  of a real photograph, CC0 or public domain, read from the scikit-image wheel
  (:mod:`data_processing.photo_sources`): ``brick`` (a brick wall / tiled floor), ``grass``, ``gravel`` (grey
  textures, each given a colour of its kind), ``wood`` (the table under skimage's coffee cup, in its own colour);
- **item colour**: the garment's own colour (any hue, saturation 0-0.8, value 0.25-0.95) with its shading
  ``colour x (1 - k v/255)``, k 0.3-0.7; in 40 % of photos (``same_brightness``) its mean brightness matches the
  surface's within +-8 % and only its hue differs (at least 90 degrees from the surface's);
- **clutter** (35 %): one to three things beside the item: a pen, a paper slip with lines of print, a roll of
  tape, a coin;
- **cut** (25 %): 5-25 % of the item outside the frame;
- **handheld** (50 %): the phone tilted and turned: rotation up to +-15 degrees (else +-4), keystone up to 15 %
  (else 3 %), and a blur of 0.6-1.8 working pixels (shake, focus), else none;
- **camera**: 300-1,200 px on the longest side, JPEG quality 40-85, uneven light, soft shadow, noise.

Every photo has its own generator (seed tuple), so any subset renders identically in any order or process.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_processing.photo_sources import load_source
from data_processing.photos import Photo, _item_layer, _luma, _paste, _smooth_noise, scene_size

REAL_RENDERER_VERSION = 1  # bump when the rendering changes: cached photo sets are keyed by it
WORKING_SIDE = 384
SURFACES = ("brick", "grass", "gravel", "wood")
DIFFICULTIES = ("same_brightness", "clutter", "cut", "handheld")
CLUTTER = ("pen", "slip", "tape", "coin")
_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0)
# The wooden table of skimage's coffee photo: the strip right of the saucer (rows, cols), no cup in it.
_WOOD_BOX = (0, 400, 478, 600)


@dataclass(frozen=True)
class RealPhotoParams:
    """Everything drawn for one photo of the real-surface slice (``keystone`` and ``angle`` as in
    :class:`~data_processing.photos.PhotoParams`, so the item layer is shared)."""

    width: int
    height: int
    surface: str
    surface_rgb: tuple[int, int, int]  # the colour a grey texture is given (wood: the photo's own, times this / 128)
    texture_gain: float  # the texture's contrast relative to the photograph's
    item_rgb: tuple[int, int, int]
    contrast: float  # k: the garment's shading
    same_brightness: bool
    clutter: tuple[str, ...]
    cut: bool
    handheld: bool
    fill: float
    centre: tuple[float, float]
    angle: float
    keystone: float
    blur: float  # Gaussian radius in working pixels (0 = sharp)
    light_gradient: float
    vignette: float
    shadow: float
    noise: float
    quality: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def difficulties(self) -> list[str]:
        """The kinds of difficulty this photo has (``plain`` for none)."""
        out = [d for d in DIFFICULTIES if getattr(self, d)]
        return out or ["plain"]


def _surface_colour(surface: str, rng: np.random.Generator) -> np.ndarray:
    if surface == "brick":  # red-brown brick or grey concrete pavers
        if rng.random() < 0.6:
            return np.array([rng.uniform(150, 200), rng.uniform(70, 110), rng.uniform(50, 85)])
        return np.full(3, rng.uniform(120, 190)) + rng.uniform(-6, 6, 3)
    if surface == "grass":
        return np.array([rng.uniform(70, 120), rng.uniform(115, 165), rng.uniform(40, 80)])
    if surface == "gravel":
        grey = rng.uniform(130, 200)
        return np.array([grey + rng.uniform(0, 15), grey + rng.uniform(-5, 10), grey - rng.uniform(0, 25)])
    return np.full(3, rng.uniform(115, 200))  # wood: a brightness gain on the photo's own colour (128 = as taken)


def _item_colour(surface_rgb: np.ndarray, same: bool, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """The garment's colour: its own, or (``same``) of the surface's mean brightness in another hue."""
    if not same:
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.0, 0.8), rng.uniform(0.25, 0.95)
        return 255 * np.array(colorsys.hsv_to_rgb(hue, sat, val))
    h0, _, _ = colorsys.rgb_to_hsv(*(surface_rgb / 255.0))
    hue = (h0 + rng.uniform(0.25, 0.75)) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.8), 1.0))
    # The garment's mean shading is ~(1 - 0.35 k): match the surface's brightness on average, +-8 %.
    target = float(_luma(surface_rgb)) * rng.uniform(0.92, 1.08) / (1.0 - 0.35 * contrast)
    return np.clip(rgb * target / max(float(_luma(rgb * 255)), 1.0) * 255, 0, 255)


def draw_real_params(rng: np.random.Generator) -> RealPhotoParams:
    """The random choices for one photo of the real-surface slice."""
    side = rng.uniform(300, 1200)
    aspect = _ASPECTS[rng.integers(len(_ASPECTS))]
    if rng.random() < 0.5:
        aspect = 1 / aspect
    width, height = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    surface = SURFACES[rng.integers(len(SURFACES))]
    surface_rgb = _surface_colour(surface, rng)
    contrast = rng.uniform(0.3, 0.7)
    same = bool(rng.random() < 0.4)
    if surface == "wood":  # the photo's own colour, scaled: its mean is what "the surface's brightness" means
        wood = load_source("coffee")[_WOOD_BOX[0] : _WOOD_BOX[1], _WOOD_BOX[2] : _WOOD_BOX[3]]
        mean_rgb = wood.reshape(-1, 3).mean(axis=0) * surface_rgb / 128.0
    else:
        mean_rgb = surface_rgb
    item = _item_colour(mean_rgb, same, contrast, rng)
    n_clutter = int(rng.integers(1, 4)) if rng.random() < 0.35 else 0
    clutter = tuple(str(CLUTTER[i]) for i in rng.integers(len(CLUTTER), size=n_clutter))
    cut, handheld = bool(rng.random() < 0.25), bool(rng.random() < 0.5)
    fill = rng.uniform(0.35, 0.8)
    short = min(width, height)
    ex, ey = fill * short / width, fill * short / height
    cx = 0.5 + rng.uniform(-1, 1) * 0.8 * max(0.0, 1 - ex) / 2
    cy = 0.5 + rng.uniform(-1, 1) * 0.8 * max(0.0, 1 - ey) / 2
    if cut:
        out, edge = rng.uniform(0.05, 0.25), int(rng.integers(4))
        if edge < 2:
            cx = ex / 2 - out * ex if edge == 0 else 1 - ex / 2 + out * ex
        else:
            cy = ey / 2 - out * ey if edge == 2 else 1 - ey / 2 + out * ey
    turn, tilt = (15.0, 0.15) if handheld else (4.0, 0.03)
    return RealPhotoParams(
        width=max(16, round(width)),
        height=max(16, round(height)),
        surface=surface,
        surface_rgb=tuple(int(c) for c in np.clip(np.round(surface_rgb), 0, 255)),
        texture_gain=round(float(rng.uniform(0.8, 1.2)), 3),
        item_rgb=tuple(int(c) for c in np.clip(np.round(item), 0, 255)),
        contrast=round(float(contrast), 4),
        same_brightness=same,
        clutter=clutter,
        cut=cut,
        handheld=handheld,
        fill=round(float(fill), 4),
        centre=(round(float(cx), 4), round(float(cy), 4)),
        angle=round(float(rng.uniform(-turn, turn)), 3),
        keystone=round(float(rng.uniform(-tilt, tilt)), 4),
        blur=round(float(rng.uniform(0.6, 1.8)), 3) if handheld else 0.0,
        light_gradient=round(float(rng.uniform(0.0, 0.35)), 4),
        vignette=round(float(rng.uniform(0.0, 0.25)), 4),
        shadow=round(float(rng.uniform(0.1, 0.35)), 4) if rng.random() < 0.6 else 0.0,
        noise=round(float(rng.uniform(1.0, 5.0)), 3),
        quality=int(rng.integers(40, 86)),
    )


def _crop_source(src: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``src`` (35-100 % of its shorter side, the frame's aspect), turned by a multiple of 90
    degrees, maybe mirrored, resized to (h, w): float32, grey (h, w) or colour (h, w, 3)."""
    k = int(rng.integers(4))
    src = np.rot90(src, k)
    if rng.random() < 0.5:
        src = src[:, ::-1]
    sh, sw = src.shape[:2]
    scale = rng.uniform(0.35, 1.0) * min(sh / h, sw / w)
    ch, cw = max(4, min(sh, round(h * scale))), max(4, min(sw, round(w * scale)))
    top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = np.ascontiguousarray(src[top : top + ch, left : left + cw])
    img = Image.fromarray(crop).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def surface_rgb(p: RealPhotoParams, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The surface's (h, w, 3) colour before lighting: the photograph's pattern around ``surface_rgb``."""
    if p.surface == "wood":
        wood = load_source("coffee")[_WOOD_BOX[0] : _WOOD_BOX[1], _WOOD_BOX[2] : _WOOD_BOX[3]]
        rgb = _crop_source(wood, h, w, rng)
        mean = rgb.reshape(-1, 3).mean(axis=0)
        rgb = mean + p.texture_gain * (rgb - mean)
        return rgb * (np.asarray(p.surface_rgb, dtype=np.float32) / 128.0)
    grey = _crop_source(load_source(p.surface), h, w, rng)
    pattern = 1.0 + p.texture_gain * (grey / max(float(grey.mean()), 1.0) - 1.0)
    return np.clip(pattern, 0.0, None)[..., None] * np.asarray(p.surface_rgb, dtype=np.float32)


def _clutter_layer(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One clutter object: its (s, s, 3) colour and (s, s) coverage, drawn with Pillow (supersampled 2x)."""
    s2 = 2 * size
    alpha = Image.new("L", (s2, s2), 0)
    colour = Image.new("RGB", (s2, s2), (0, 0, 0))
    da, dc = ImageDraw.Draw(alpha), ImageDraw.Draw(colour)
    if kind == "pen":
        width = max(2, round(s2 * rng.uniform(0.05, 0.08)))
        rgb = tuple(int(c) for c in rng.choice([[20, 30, 120], [15, 15, 15], [150, 20, 20], [30, 110, 40]]))
        da.rectangle([0, s2 // 2 - width // 2, s2 - 1, s2 // 2 + width // 2], fill=255)
        dc.rectangle([0, 0, s2, s2], fill=rgb)
        dc.rectangle([0, s2 // 2 - width // 2, s2 // 5, s2 // 2 + width // 2], fill=(200, 200, 200))
    elif kind == "slip":
        h2 = round(s2 * rng.uniform(0.4, 0.7))
        top = (s2 - h2) // 2
        da.rectangle([0, top, s2 - 1, top + h2], fill=255)
        dc.rectangle([0, 0, s2, s2], fill=tuple(int(c) for c in rng.uniform(225, 250, 3)))
        for y in range(top + s2 // 12, top + h2 - s2 // 20, max(3, s2 // 12)):  # lines of print
            dc.rectangle([s2 // 10, y, s2 // 10 + round(rng.uniform(0.4, 0.8) * s2), y + max(1, s2 // 40)], fill=40)
    elif kind == "tape":
        da.ellipse([0, 0, s2 - 1, s2 - 1], fill=255)
        da.ellipse([s2 // 4, s2 // 4, 3 * s2 // 4, 3 * s2 // 4], fill=0)
        dc.rectangle([0, 0, s2, s2], fill=tuple(int(c) for c in rng.choice([[200, 170, 110], [230, 230, 225]])))
    else:  # coin
        c = round(s2 * 0.3)
        da.ellipse([s2 // 2 - c, s2 // 2 - c, s2 // 2 + c, s2 // 2 + c], fill=255)
        dc.rectangle([0, 0, s2, s2], fill=tuple(int(v) for v in rng.choice([[180, 150, 80], [170, 170, 175]])))
    angle = float(rng.uniform(0, 180))
    alpha = alpha.rotate(angle, Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BOX)
    colour = colour.rotate(angle, Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BOX)
    return np.asarray(colour, dtype=np.float32), np.asarray(alpha, dtype=np.float32) / 255.0


def _add_clutter(rgb: np.ndarray, p: RealPhotoParams, rng: np.random.Generator, item: tuple) -> np.ndarray:
    """Clutter objects beside the item (their centres outside its box), each casting a faint shadow."""
    h, w = rgb.shape[:2]
    cx, cy, half = item
    for kind in p.clutter:
        size = max(6, round(min(h, w) * rng.uniform(0.15, 0.35)))
        col, a = _clutter_layer(kind, size, rng)
        for _ in range(20):  # a place beside the item, not on it
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if abs(x - cx) > half + size / 3 or abs(y - cy) > half + size / 3:
                break
        cover = _paste(h, w, a, x, y)
        shade = _paste(h, w, a, x + size * 0.04, y + size * 0.04)
        rgb = rgb * (1.0 - 0.25 * shade)[..., None]
        colour = np.stack([_paste(h, w, col[..., c], x, y) for c in range(3)], axis=-1)
        rgb = rgb * (1.0 - cover)[..., None] + colour * cover[..., None]
    return rgb


def compose_real_scene(image: np.ndarray, p: RealPhotoParams, rng: np.random.Generator) -> Image.Image:
    """The upright RGB scene at the working resolution."""
    w, h = scene_size(p, WORKING_SIDE)
    back = surface_rgb(p, rng, h, w) * (1.0 + 0.02 * _smooth_noise(rng, h, w, 5))[..., None]
    size = max(4, round(p.fill * min(w, h)))
    dark, alpha = _item_layer(image, p, size)  # reads p.keystone and p.angle
    cx, cy = p.centre[0] * w, p.centre[1] * h
    back = _add_clutter(back, p, rng, (cx, cy, size / 2))
    a = np.clip(_paste(h, w, np.asarray(alpha), cx, cy), 0.0, 1.0)
    d = np.clip(_paste(h, w, np.asarray(dark), cx, cy), 0.0, 1.0)
    if p.shadow > 0:
        dx, dy = rng.uniform(0.02, 0.07, 2) * size * rng.choice([-1, 1], 2)
        cast = np.clip(_paste(h, w, np.asarray(alpha), cx + dx, cy + dy), 0.0, 1.0)
        soft = Image.fromarray(np.round(cast * 255).astype(np.uint8), mode="L")
        soft = soft.filter(ImageFilter.GaussianBlur(max(1.0, float(rng.uniform(0.02, 0.06)) * size)))
        back = back * (1.0 - p.shadow * np.asarray(soft, dtype=np.float32) / 255.0)[..., None]
    u = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    v = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = 0.5 + (u * np.cos(theta) + v * np.sin(theta)) / math.sqrt(0.5)
    light = (1.0 - p.light_gradient * np.clip(ramp, 0, 1)) * (1.0 - p.vignette * 2 * (u * u + v * v))
    item = (1.0 - p.contrast * d)[..., None] * np.asarray(p.item_rgb, dtype=np.float32)
    rgb = light[..., None] * (back * (1.0 - a)[..., None] + item * a[..., None])
    rgb += p.noise * rng.standard_normal((h, w, 1), dtype=np.float32)
    scene = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    if p.blur > 0:
        scene = scene.filter(ImageFilter.GaussianBlur(p.blur))
    return scene


def render_real_photo(image: np.ndarray, seed: int | Sequence[int]) -> Photo:
    """One 28x28 Fashion-MNIST image -> a hand-held photo of it on a real surface, as JPEG bytes."""
    rng = np.random.default_rng(seed)
    p = draw_real_params(rng)
    return encode(compose_real_scene(image, p, rng), p)


def encode(scene: Image.Image, p: RealPhotoParams) -> Photo:
    """The scene resized to the photo's size and saved as a JPEG of its quality."""
    if scene.size != (p.width, p.height):
        scene = scene.resize((p.width, p.height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    scene.save(buf, format="JPEG", quality=p.quality)
    return Photo(buf.getvalue(), p)  # type: ignore[arg-type]  # Photo carries either kind of parameters


def params_dict(p: RealPhotoParams) -> dict:
    """A flat JSON-ready dict of the parameters (and the megapixels, the difficulties)."""
    return {**asdict(p), "megapixels": round(p.megapixels, 3), "difficulties": p.difficulties()}
