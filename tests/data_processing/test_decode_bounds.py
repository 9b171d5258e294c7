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
    ImageError,
    PixelBudgetExceeded,
    decode_image,
    preprocess_bytes,
)
from tests.support.decode import (
    flat_png,
    flat_webp,
    one_byte_idat_png,
    png_with_chunks,
    probe,
    rle8_bmp,
    scan_bomb_jpeg,
)

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


# --- issue 28: decoding work, charged at the declared size, bounded before the decoder runs ---------------------


def test_a_jpeg_of_one_scan_repeated_2000_times_is_refused_before_anything_is_decoded(tmp_path):
    bomb = scan_bomb_jpeg(7000, 2000)  # the finding's 388 KB JPEG: 15.2 s of a worker, then 413 decode_time_exceeded
    assert len(bomb) < 400_000
    out = probe(tmp_path, bomb)
    assert (out["status"], out["code"]) == (413, "decode_work_exceeded"), out
    assert "scans" in out["message"]
    assert out["pixels_decoded"] == 0


def test_scans_are_charged_at_the_declared_size_not_the_draft():
    # 46 scans (under the scan cap) that each sweep 7000x7000: 2.25 G samples, over 20 passes of a 50 MP image.
    with pytest.raises(ImageError) as exc:
        preprocess_bytes(scan_bomb_jpeg(7000, 40))
    assert exc.value.code == "decode_work_exceeded" and exc.value.http_status == 413
    assert "sample passes" in str(exc.value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: png_with_chunks(b"prIv", b"", 1_500_000), id="png-1.5M-private-chunks"),  # 11.6 s
        pytest.param(lambda: png_with_chunks(b"prIv", b"", 1_500_000, after_data=True), id="png-private-after-idat"),
        pytest.param(lambda: png_with_chunks(b"tEXt", b"k\x00v", 1_200_000), id="png-1.2M-text-chunks"),  # 7.7 s
        pytest.param(one_byte_idat_png, id="png-1-byte-idats"),  # 4.3 s
        pytest.param(rle8_bmp, id="bmp-16.8MB-rle8"),  # 8.2 s
    ],
)
def test_container_bombs_are_refused_before_pillow_sees_them(monkeypatch, make):
    data = make()
    from PIL import Image as PILImage

    def never(*args, **kwargs):
        raise AssertionError("Pillow was handed the file")

    monkeypatch.setattr(PILImage, "open", never)
    with pytest.raises(ImageError) as exc:
        preprocess_bytes(data, budget=DecodeBudget(max_seconds=10.0))
    assert exc.value.code == "decode_work_exceeded" and exc.value.http_status == 413


def test_a_request_stops_at_its_decoding_work_budget():
    # Each image is within its own limits; together they are over the request's work budget.
    budget = DecodeBudget(max_total_work=3 * 256 * 256 + 10_000)
    png = flat_png(256, 256, value=80)
    for _ in range(3):
        preprocess_bytes(png, budget=budget)
    with pytest.raises(ImageError) as exc:
        preprocess_bytes(png, budget=budget)
    assert exc.value.code == "decode_work_exceeded"


def test_an_mpo_jpeg_takes_the_reduced_scale_path_like_the_same_plain_jpeg(tmp_path):
    # Android Ultra HDR and some cameras append images after an MPF segment: Pillow opens them as MPO, which
    # skipped the draft decode and answered 413 where the same picture as a plain JPEG answered 200.
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).resize(
        (6000, 4500), Image.Resampling.NEAREST
    )  # 27 MP: over the full-scale cap, 750x563 at the 1/8 draft
    plain, mpo = io.BytesIO(), io.BytesIO()
    picture.save(plain, "JPEG", quality=80)
    picture.save(mpo, "MPO", quality=80, save_all=True, append_images=[picture.resize((600, 450))])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    out = probe(tmp_path, mpo.getvalue())
    assert out["status"] == 200, out
    assert out["pixels_decoded"] == 750 * 563
    np.testing.assert_array_equal(preprocess_bytes(mpo.getvalue()), preprocess_bytes(plain.getvalue()))
