"""Warehouse photos of Fashion-MNIST items (data_processing.photos) and THE preprocessing's photo path."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from data_ingestion.fashion_mnist import load_split
from data_processing.photos import BACKDROPS, draw_params, render_photo, render_with
from data_processing.preprocessing import backdrop_surface, item_darkness, preprocess_array, preprocess_bytes


@pytest.fixture(scope="module")
def items(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split("test", fmnist_dir, tmp_path_factory.mktemp("fm"))
    return x[:400], y[:400]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel correlation of two 28x28 images, the best over relative shifts of up to one pixel (framing a photo
    can land a pixel off Fashion-MNIST's, which alone drops a textured item's correlation to ~0.8)."""
    from inference.tta import shift_images

    b = b.astype(np.float64)
    best = -1.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = shift_images(a.astype(np.float64)[None, ..., None], dy, dx)[0, ..., 0]
            best = max(best, float(np.corrcoef(moved.ravel(), b.ravel())[0, 1]))
    return best


def plain_params(seed: int, **changes):
    """Drawn parameters with the geometric effects switched off, then ``changes`` applied."""
    p = draw_params(np.random.default_rng(seed))
    still = {"angle": 0.0, "keystone": 0.0, "cut": False, "exif_orientation": 1, "centre": (0.5, 0.5)}
    return replace(p, **{**still, **changes})


def test_rendering_is_seeded_and_varied(items) -> None:
    x, _ = items
    a, b = render_photo(x[0], (1, 2, 3)), render_photo(x[0], (1, 2, 3))
    assert a.data == b.data and a.params == b.params  # the seed fixes every pixel
    assert render_photo(x[0], (1, 2, 4)).data != a.data
    assert a.params == draw_params(np.random.default_rng((1, 2, 3)))  # the parameters are the first draws
    others = [draw_params(np.random.default_rng((1, 2, i))) for i in range(60)]
    assert len({p.backdrop for p in others}) == len(BACKDROPS)
    assert {p.item_tone for p in others} == {"dark", "light"}
    mps = [p.megapixels for p in others]
    assert min(mps) > 0.29 and max(mps) < 12.1 and max(mps) > 4 * min(mps)
    assert all(50 <= p.quality <= 95 and abs(p.angle) <= 10 for p in others)
    assert any(p.exif_orientation != 1 for p in others) and any(p.cut for p in others)


def test_a_photo_is_a_jpeg_of_the_drawn_size_shown_upright(items) -> None:
    x, _ = items
    # Seeds chosen by their (cheap) parameters: small photos, every EXIF orientation among them.
    seeds = [(5, i) for i in range(400) if draw_params(np.random.default_rng((5, i))).megapixels < 1.5]
    by_orientation = {}
    for seed in seeds:
        by_orientation.setdefault(draw_params(np.random.default_rng(seed)).exif_orientation, []).append(seed)
    assert set(by_orientation) == {1, 3, 6, 8}
    for seed in [s for group in by_orientation.values() for s in group[:3]]:
        photo = render_photo(x[1], seed)
        img = Image.open(io.BytesIO(photo.data))
        assert img.format == "JPEG"
        stored = img.size
        upright = ImageOps.exif_transpose(img).size
        assert upright == (photo.params.width, photo.params.height)
        if photo.params.exif_orientation in (6, 8):  # stored sideways; the tag turns it back
            assert stored == (photo.params.height, photo.params.width)


def test_photo_path_recovers_the_item_under_uneven_light_on_every_backdrop(items) -> None:
    x, _ = items
    scores = []
    for i, backdrop in enumerate(BACKDROPS * 2):
        rng = np.random.default_rng(100 + i)
        p = plain_params(100 + i, light_gradient=0.35, vignette=0.25, shadow=0.0)
        while p.backdrop != backdrop:  # keep drawing until this backdrop comes up (seeded)
            p = replace(draw_params(rng), **{k: getattr(p, k) for k in ("angle", "keystone", "cut", "centre")})
            p = replace(p, exif_orientation=1, light_gradient=0.35, vignette=0.25, shadow=0.0)
        out = preprocess_bytes(render_with(x[i], p, rng).data)
        scores.append(correlation(out, x[i]))
        assert scores[-1] > 0.7, (backdrop, p)
        assert out.max() == 255  # stretched like Fashion-MNIST's items
        corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
        assert max(corners) < 40, (backdrop, corners)  # the backdrop became black despite the uneven light
    # Not 1: Fashion-MNIST subsampled and sharpened its items, the photo path resamples a smooth photo.
    assert np.median(scores) > 0.85


def test_photo_path_keeps_light_items_and_their_tones(items) -> None:
    x, _ = items
    scores = []
    for i in range(12):
        p = plain_params(200 + i, item_tone="light", contrast=0.3, shadow=0.0, backdrop="white", texture="")
        p = replace(p, backdrop_rgb=(245, 245, 245), tint_rgb=(1.0, 1.0, 1.0))
        scores.append(correlation(preprocess_bytes(render_with(x[i], p, np.random.default_rng(i)).data), x[i]))
    assert np.median(scores) > 0.9  # a pale item on white still comes out as its Fashion-MNIST self


def test_a_faint_body_under_bright_seams_is_framed_with_them() -> None:
    # A dark garment on a white backdrop as Fashion-MNIST stores it: bright (dark in the photo) shoulders, a body at
    # a quarter of their darkness. Framing only the part above 40 % of the peak would crop to the shoulders.
    item = np.zeros((28, 28), dtype=np.uint8)
    item[4:24, 8:20] = 70  # the body
    item[4:7, 6:22] = 255  # shoulders
    p = plain_params(7, item_tone="dark", contrast=0.9, shadow=0.0, backdrop="white", texture="", fill=0.6)
    p = replace(p, backdrop_rgb=(240, 240, 240), tint_rgb=(1.0, 1.0, 1.0), light_gradient=0.1, vignette=0.05)
    out = preprocess_bytes(render_with(item, p, np.random.default_rng(7)).data)
    rows = np.flatnonzero(out.max(axis=1) > 40)
    assert rows[-1] - rows[0] >= 24  # the whole item spans the frame's height, as in Fashion-MNIST
    body = out[12:18, 11:17]
    assert 20 < np.median(body) < 160  # and the body is there, fainter than the seams


def test_the_item_box_ends_at_the_item_like_fashion_mnist_trims_it() -> None:
    from data_processing.preprocessing import item_box

    # A 200 x 100 item in a 512 x 384 darkness map: the box is estimated on a 128-px copy (4 px per pixel there),
    # whose smoothing spreads the edge by one such pixel; no margin is added on top (one more pixel a side, the rule
    # before, framed items smaller than Fashion-MNIST's, which fill the frame: -0.32 points on validation photos).
    darkness = np.zeros((512, 384), dtype=np.float32)
    darkness[100:300, 150:250] = 0.8
    top, bottom, left, right = item_box(darkness)
    assert 96 <= top <= 100 and 300 <= bottom <= 304
    assert 146 <= left <= 150 and 250 <= right <= 254


def test_a_shadow_or_the_backdrop_texture_does_not_stretch_the_frame(items) -> None:
    # The faint parts an item is grown into must touch it and stay clear of the frame: tiles' grout lines run
    # across the whole photo, a light item's soft shadow sits beside it.
    x, _ = items
    for i, (backdrop, texture) in enumerate([("textured", "tiles"), ("textured", "cardboard"), ("white", "")]):
        p = plain_params(300 + i, item_tone="light", contrast=0.4, shadow=0.25, backdrop=backdrop, texture=texture)
        p = replace(p, fill=0.5)
        out = preprocess_bytes(render_with(x[i], p, np.random.default_rng(300 + i)).data)
        assert correlation(out, x[i]) > 0.7, texture


def test_photo_path_on_random_photos_mostly_matches_the_original(items) -> None:
    x, _ = items
    scores = [correlation(preprocess_bytes(render_photo(x[i], (9, i)).data), x[i]) for i in range(40)]
    # Rotation, perspective and cut-offs move pixels, so not all are near 1; most are close.
    assert np.median(scores) > 0.8 and np.mean(np.array(scores) > 0.6) > 0.85


def test_polarity_follows_the_item_not_the_backdrop_brightness() -> None:
    # A mid-grey backdrop darkened at the edges (vignetting) so the border median is below 127.5, with a darker item.
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2
    gray = 165.0 * (1 - 0.9 * r2)
    assert np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])) < 127.5
    gray[100:200, 175:225] *= 0.3  # the item, twice as tall as wide: darker than its backdrop
    out = preprocess_array(np.clip(gray, 0, 255).astype(np.uint8))
    # A light item on black, as Fashion-MNIST (framed in a square: black on its left and right)
    assert out[14, 14] > 200 and out[14, 0] < 20 and out[14, -1] < 20


def test_backdrop_surface_follows_a_light_gradient_and_ignores_the_item() -> None:
    h, w = 240, 320
    ramp = np.linspace(150, 240, w)[None, :].repeat(h, axis=0)
    gray = ramp.copy()
    gray[60:180, 100:220] = 30
    surface = backdrop_surface(gray.astype(np.uint8))
    assert np.abs(surface - ramp).max() < 6  # the gradient under the item is interpolated, not pulled down
    darkness = item_darkness(gray.astype(np.uint8))
    assert darkness[:50].max() < 0.05 and darkness[100, 150] > 0.8


def test_fashion_mnist_and_its_inverse_are_unchanged(items) -> None:
    x, _ = items
    for img in x[:50]:
        np.testing.assert_array_equal(preprocess_array(img), img)  # bit-identical
        np.testing.assert_array_equal(preprocess_array(255 - img), img)  # dark on white, 28x28: inverted back


@pytest.mark.parametrize("level", [5, 60, 128, 230])
def test_a_blank_shot_stays_blank_instead_of_its_noise_being_stretched_into_an_item(level):
    from data_processing.preprocessing import item_contrast

    noise = np.clip(np.random.default_rng(level).normal(level, 4, (480, 640)), 0, 255).astype(np.uint8)
    assert item_contrast(noise) == 0.0
    assert preprocess_array(noise).max() == 0  # nothing to see: the model gets an empty frame, not noise at 255
    item = noise.copy()
    item[120:360, 200:440] = np.clip(level - 60, 0, None) if level > 100 else level + 60  # a clearly visible item
    out = preprocess_array(item)
    assert out.max() == 255 and (out > 128).mean() > 0.2  # a visible item is still stretched to full scale
