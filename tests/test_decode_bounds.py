"""Decode amplification (issue 14): tiny files that declare huge images, and requests full of them, are refused
from their headers with a JSON 413 and a reason; what is decoded is bounded per image and per request; large
legal images never get a full-size float copy. Each request runs in a fresh process (``_decode_probe.py``) that
counts the pixels Pillow really decodes and the request's peak-RSS growth; no wall-clock bounds here (time is
measured by ``benchmarks/bench_decode.py``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_processing.preprocessing import (
    MAX_DECODE_PIXELS,
    DecodeBudget,
    DecodeTimeExceeded,
    PixelBudgetExceeded,
    decode_image,
    preprocess_bytes,
)
from tests.support.decode import flat_png, flat_webp, probe

pytestmark = pytest.mark.slow

# A refused request may allocate a little (multipart parsing, JSON); decoding even one hostile image took 756 MB.
REFUSED_GROWTH_MB = 40


@pytest.fixture(scope="module")
def webp_16383x3000() -> bytes:
    return flat_webp(16383, 3000)  # the finding's 1.9 KB WebP: 1.1 s and 756 MB


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: flat_png(7071, 7071, bit_depth=16), id="png16-7071x7071"),  # 3.1 s, +1.24 GB
        pytest.param(lambda: flat_png(49_999_999, 1), id="png-49999999x1"),  # 1 x 49,999,999: 5.0 s, 1.34 GB
    ],
)
def test_hostile_png_is_refused_from_its_header(tmp_path, make):
    out = probe(tmp_path, make())
    assert (out["status"], out["code"]) == (413, "image_too_large"), out
    assert "exceeds the limit" in out["message"]
    assert out["pixels_decoded"] == 0
    assert out["rss_growth_mb"] < REFUSED_GROWTH_MB, out


def test_hostile_webp_alone_and_32_in_one_request_are_refused_from_the_header(tmp_path, webp_16383x3000):
    assert len(webp_16383x3000) < 4096
    for payloads in ([webp_16383x3000], [webp_16383x3000] * 32):  # one request of 32 took 35.6 s
        out = probe(tmp_path, *payloads)
        assert (out["status"], out["code"]) == (413, "image_too_large"), out
        assert out["pixels_decoded"] == 0
        assert out["rss_growth_mb"] < REFUSED_GROWTH_MB, out


def test_a_request_of_legal_images_stops_at_its_pixel_budget(tmp_path):
    # 32 images at the per-image cap would be 537 MP; the request's budget (4 such images) stops it.
    side = 4096
    assert side * side == MAX_DECODE_PIXELS
    out = probe(tmp_path, *[flat_png(side, side, value=40)] * 32)
    assert (out["status"], out["code"]) == (413, "pixel_budget_exceeded"), out
    assert out["pixels_decoded"] == 4 * MAX_DECODE_PIXELS
    assert out["rss_growth_mb"] < 150, out


def test_largest_legal_16_bit_png_decodes_without_a_float64_copy(tmp_path):
    # 16.8 MP at 16 bits: the float64 conversion alone was 134 MB, the float32 pipeline on the full frame ~270 MB.
    out = probe(tmp_path, flat_png(4096, 4096, bit_depth=16, value=30000))
    assert out["status"] == 200, out
    assert out["pixels_decoded"] == MAX_DECODE_PIXELS
    assert out["rss_growth_mb"] < 120, out


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((8000, 6000), Image.Resampling.NEAREST).save(buf, "JPEG", quality=70)  # 48 MP
    out = probe(tmp_path, buf.getvalue())
    assert out["status"] == 200, out
    assert out["pixels_decoded"] == 1000 * 750  # the 1/8 draft, not 48,000,000


def test_decode_time_budget_refuses_the_rest_of_a_request():
    now = [100.0]
    budget = DecodeBudget(max_seconds=10.0, clock=lambda: now[0])
    png = flat_png(64, 64, value=90)
    preprocess_bytes(png, budget=budget)
    now[0] += 10.5  # the first images used up the request's time
    with pytest.raises(DecodeTimeExceeded) as exc:
        preprocess_bytes(png, budget=budget)
    assert exc.value.http_status == 413 and exc.value.code == "decode_time_exceeded"
    assert budget.decoded_pixels == 64 * 64


def test_pixel_budget_is_charged_before_decoding():
    budget = DecodeBudget(max_total_pixels=100 * 100)
    decode_image(flat_png(100, 60), budget=budget)
    with pytest.raises(PixelBudgetExceeded):
        decode_image(flat_png(100, 41), budget=budget)
    assert budget.decoded_pixels == 100 * 60


def test_reduced_decoding_keeps_16_bit_values_exact():
    # The integer path must equal round(v * 255 / 65535) for every 16-bit value (the old float64 result).
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    from data_processing.preprocessing import to_grayscale

    out = to_grayscale(Image.fromarray(values))
    expected = np.round(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
