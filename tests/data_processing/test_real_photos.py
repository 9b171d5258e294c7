"""Photos on real surfaces, hand-held (data_processing.real_photos) and the photographs they are made of
(data_processing.photo_sources)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_ingestion.fashion_mnist import load_split
from data_processing.photo_sources import SOURCES, SourceMissing, load_source, source_path
from data_processing.real_photos import DIFFICULTIES, SURFACES, draw_real_params, render_real_photo


@pytest.fixture(scope="module")
def items(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_split("test", fmnist_dir, tmp_path_factory.mktemp("fm"))
    return x[:200], y[:200]


def test_every_source_is_installed_unchanged_and_licensed() -> None:
    from data_processing.photo_sources import main

    assert main([]) == 0  # the manifest's files are in the installed wheel with the recorded SHA-256
    for src in SOURCES.values():
        assert src.licence in ("CC0-1.0", "public domain") and src.origin
        assert load_source(src.name).dtype == np.uint8 and min(load_source(src.name).shape[:2]) >= 256


def test_a_changed_source_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_processing import photo_sources

    fake = tmp_path / "brick.png"
    Image.new("L", (8, 8)).save(fake)
    monkeypatch.setattr(photo_sources, "source_path", lambda name: fake)
    load_source.cache_clear()
    try:
        with pytest.raises(SourceMissing, match=r"data/brick\.png of scikit-image changed"):
            load_source("brick")
    finally:
        load_source.cache_clear()
    assert source_path("brick").name == "brick.png"


def test_real_surface_photos_are_seeded_and_cover_every_surface_and_difficulty(items) -> None:
    x, _ = items
    a, b = render_real_photo(x[0], (1, 12, 3)), render_real_photo(x[0], (1, 12, 3))
    assert a.data == b.data and a.params == b.params
    assert a.params == draw_real_params(np.random.default_rng((1, 12, 3)))  # the parameters are the first draws
    drawn = [draw_real_params(np.random.default_rng((1, 12, i))) for i in range(80)]
    assert {p.surface for p in drawn} == set(SURFACES)
    assert {d for p in drawn for d in p.difficulties()} == {*DIFFICULTIES, "plain"}
    assert all(300 <= max(p.width, p.height) <= 1200 and 40 <= p.quality <= 85 for p in drawn)
    assert all(abs(p.angle) <= (15 if p.handheld else 4) for p in drawn)
    with Image.open(io.BytesIO(a.data)) as img:
        assert img.format == "JPEG" and img.size == (a.params.width, a.params.height)


def test_same_brightness_items_differ_from_their_surface_by_hue_only() -> None:
    from data_processing.photos import _luma

    for i in range(40):
        p = draw_real_params(np.random.default_rng((5, 12, i)))
        if p.same_brightness and p.surface != "wood":
            mean_item = _luma(np.asarray(p.item_rgb, float)) * (1 - 0.35 * p.contrast)
            assert mean_item == pytest.approx(_luma(np.asarray(p.surface_rgb, float)), rel=0.12)
