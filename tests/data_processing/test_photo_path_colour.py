"""THE preprocessing's photo path finds an item by colour and texture as well as brightness (issue 27): on real
surfaces, beside clutter, and still unchanged for a Fashion-MNIST image in colour."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_ingestion.fashion_mnist import load_split
from data_processing import preprocessing
from data_processing.preprocessing import preprocess_array, preprocess_bytes, to_pixels
from data_processing.real_photos import compose_real_scene, draw_real_params, encode
from tests.data_processing.test_photos import correlation


@pytest.fixture(scope="module")
def items(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split("test", fmnist_dir, tmp_path_factory.mktemp("fm"))
    return x[:50], y[:50]


def _still(seed: int, **changes):
    p = draw_real_params(np.random.default_rng(seed))
    still = {"angle": 0.0, "keystone": 0.0, "cut": False, "centre": (0.5, 0.5), "clutter": (), "blur": 0.0}
    return replace(p, **{**still, **changes})


def _photo(item: np.ndarray, p) -> bytes:
    return encode(compose_real_scene(item, p, np.random.default_rng(0)), p).data


@pytest.mark.parametrize("surface", ["gravel", "grass", "brick"])
def test_an_item_as_bright_as_its_textured_surface_is_found_by_colour_and_texture(items, surface, monkeypatch):
    # A garment of the surface's brightness in another hue: the grey conversion erases it, the colour path does not.
    from data_processing.real_photos import _item_colour

    x, _ = items
    surface_rgb = {"gravel": (170, 160, 140), "grass": (95, 140, 60), "brick": (175, 95, 70)}[surface]
    found, grey = [], []
    for i in range(6):
        p = _still(40 + i, surface=surface, surface_rgb=surface_rgb, fill=0.6, shadow=0.0, quality=80)
        item_rgb = _item_colour(np.asarray(surface_rgb, float), True, 0.4, np.random.default_rng(i))  # the rule
        p = replace(p, item_rgb=tuple(int(c) for c in item_rgb), contrast=0.4, same_brightness=True)
        data = _photo(x[i], p)
        found.append(correlation(preprocess_bytes(data), x[i]))
        monkeypatch.setattr(preprocessing, "_SEGMENTER", "grey")
        grey.append(correlation(preprocess_bytes(data), x[i]))
        monkeypatch.setattr(preprocessing, "_SEGMENTER", "colour")
    assert np.median(found) > 0.75, found  # the item, framed like Fashion-MNIST
    assert np.median(grey) < np.median(found) - 0.2, (grey, found)  # brightness alone sees speckle


def test_clutter_beside_the_item_stays_out_of_its_frame(items) -> None:
    x, _ = items
    scores = []
    for i in range(6):
        p = _still(60 + i, surface="wood", fill=0.5, shadow=0.0, quality=85, clutter=("pen", "coin"))
        p = replace(p, centre=(0.6, 0.55))
        scores.append(correlation(preprocess_bytes(_photo(x[i], p)), x[i]))
    assert np.median(scores) > 0.75, scores


def test_a_colour_photo_of_a_fashion_mnist_image_still_passes_unchanged(items) -> None:
    x, _ = items
    for img in x[:20]:
        buf = io.BytesIO()
        Image.fromarray(img).convert("RGB").save(buf, format="PNG")
        pixels = to_pixels(Image.open(io.BytesIO(buf.getvalue())))
        assert pixels.shape == (28, 28, 3)
        np.testing.assert_array_equal(preprocess_array(pixels), img)
        np.testing.assert_array_equal(preprocess_bytes(buf.getvalue()), img)


def test_a_plain_colour_blank_shot_stays_blank() -> None:
    rng = np.random.default_rng(4)
    blank = np.clip(rng.normal((180, 140, 90), 3, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert preprocess_array(blank).max() < 40  # no item: the model gets (nearly) an empty frame


def _interior_correlation(model_image: np.ndarray, item: np.ndarray) -> float:
    """Correlation over the item's own pixels only: its shading, not its silhouette against the black frame."""
    inside = item > 30
    return float(np.corrcoef(model_image[inside].astype(float), item[inside].astype(float))[0, 1])


def test_a_garment_lighter_than_its_surface_keeps_its_shading(items, monkeypatch) -> None:
    # A light garment on dark gravel: against the backdrop its folds (darker) come out dimmer than its flat parts,
    # the shading turned inside out; against the item's own white they are what they are on white.
    x, _ = items
    dark_gravel = {"surface": "gravel", "surface_rgb": (80, 75, 70), "fill": 0.6, "shadow": 0.0, "quality": 80}
    light = {"item_rgb": (220, 200, 150), "contrast": 0.6}
    photos = [_photo(x[i], replace(_still(80 + i, **dark_gravel), **light)) for i in range(6)]
    own_white = [_interior_correlation(preprocess_bytes(d), x[i]) for i, d in enumerate(photos)]
    monkeypatch.setattr(preprocessing, "_ITEM_WHITE", 0.0)  # the backdrop rule before
    backdrop = [_interior_correlation(preprocess_bytes(d), x[i]) for i, d in enumerate(photos)]
    assert np.median(own_white) > 0.3, own_white
    assert np.median(backdrop) < 0.0, backdrop


def _small_same_brightness(item: np.ndarray, i: int, surface: str, rgb: tuple[int, int, int]) -> bytes:
    from data_processing.real_photos import _item_colour

    p = _still(40 + i, surface=surface, surface_rgb=rgb, fill=0.35, shadow=0.0, quality=80, width=1200, height=900)
    item_rgb = _item_colour(np.asarray(rgb, float), True, 0.4, np.random.default_rng(i))
    return _photo(item, replace(p, item_rgb=tuple(int(c) for c in item_rgb), contrast=0.4, same_brightness=True))


def test_a_small_item_is_looked_at_closer(items, monkeypatch) -> None:
    # A garment a third of a 1,200-px photo's height, as bright as gravel or grass: found again on a crop around it,
    # its silhouette is resolved finer than on the whole photo's 128-px copy.
    x, _ = items
    photos = [(i, _small_same_brightness(x[i], i, s, rgb))
              for s, rgb in (("gravel", (170, 160, 140)), ("grass", (95, 140, 60))) for i in range(8)]  # fmt: skip
    closer = [correlation(preprocess_bytes(d), x[i]) for i, d in photos]
    monkeypatch.setattr(preprocessing, "_ZOOM_BELOW", 0.0)
    whole = [correlation(preprocess_bytes(d), x[i]) for i, d in photos]
    assert np.median(closer) > np.median(whole) + 0.02, (closer, whole)
    assert np.median(closer) > 0.75, closer


def test_the_closer_look_crops_around_a_small_box_only() -> None:
    from data_processing.preprocessing import _ZOOM_MARGIN, _zoomed

    assert _zoomed((0, 700, 0, 500), (900, 1200)) is None  # most of the height: no closer look
    top, bottom, left, right = _zoomed((300, 500, 400, 600), (900, 1200))
    margin = round(_ZOOM_MARGIN * 200)
    assert (top, bottom, left, right) == (300 - margin, 500 + margin, 400 - margin, 600 + margin)
    assert _zoomed((0, 100, 1150, 1200), (900, 1200)) == (0, 100 + round(_ZOOM_MARGIN * 100), 1125, 1200)  # clipped
