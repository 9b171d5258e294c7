"""Hostile images of the decode-amplification findings (tiny files that declare huge pixel counts), written
without ever holding their pixels in memory, and the probe that measures one request in its own process."""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

PROBE = "tests.support.decode_probe"  # run as a module in a fresh process


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def flat_png(width: int, height: int, *, bit_depth: int = 8, value: int = 0) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` (one flat value), compressed row by row: 97 KB for 7071^2
    at 16 bits, 49 KB for 49,999,999 x 1."""
    bytes_per_px = bit_depth // 8
    row = b"\x00" + value.to_bytes(bytes_per_px, "big") * width
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def flat_webp(width: int, height: int) -> bytes:
    """A lossless flat WebP (16383 x 3000 is 1.9 KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def probe(tmp_path: Path, *payloads: bytes) -> dict:
    """POST ``payloads`` as one request in a fresh process; returns status, code, pixels_decoded, rss_growth_mb."""
    paths = []
    for i, data in enumerate(payloads):
        path = tmp_path / f"payload-{len(list(tmp_path.iterdir()))}-{i}.bin"
        path.write_bytes(data)
        paths.append(str(path))
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", PROBE, *paths], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- decoding-work bombs (issue 28): valid files whose decoding work is out of proportion to their pixels ---


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment of a JPEG, a scan's entropy-coded data included in its segment."""
    pos, out = 2, []
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((marker, pos, pos + 2))
            break
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, pos, end))
        pos = end
    return out


@functools.lru_cache(maxsize=2)
def _progressive_gray(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def scan_bomb_jpeg(side: int = 7000, repeats: int = 2000) -> bytes:
    """A valid ``side`` x ``side`` progressive grayscale JPEG whose first AC scan (with its Huffman table) is
    repeated ``repeats`` times more: the finding's 388 KB bomb at the defaults, ~98 bytes a scan."""
    data = _progressive_gray(side)
    segments = _jpeg_segments(data)
    scans = [i for i, (marker, _, _) in enumerate(segments) if marker == 0xDA]
    first_ac = scans[1]  # scans[0] is the DC scan; the AC scan is preceded by its own DHT segment
    start, end = segments[first_ac - 1][1], segments[first_ac][2]
    return data[:end] + data[start:end] * repeats + data[end:]


def png_with_chunks(kind: bytes, payload: bytes, count: int, *, after_data: bool = False) -> bytes:
    """A 64x64 PNG carrying ``count`` extra ``kind`` chunks, before its image data or after it."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes([90]) * 64 for _ in range(64))))
    extra = _chunk(kind, payload) * count
    body = idat + extra if after_data else extra + idat
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + _chunk(b"IEND", b"")


def one_byte_idat_png(side: int = 1024, seed: int = 0) -> bytes:
    """A ``side`` x ``side`` grayscale noise PNG whose compressed data is split into 1-byte IDAT chunks."""
    import numpy as np

    rows = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    stream = zlib.compress(raw, 1)
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    idats = b"".join(_chunk(b"IDAT", stream[i : i + 1]) for i in range(len(stream)))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idats + _chunk(b"IEND", b"")


def rle8_bmp(side: int = 4096) -> bytes:
    """A ``side`` x ``side`` 8-bit run-length-coded BMP of 2-pixel runs (16.8 MB at 4096)."""
    row = bytes([2, 7]) * (side // 2) + b"\x00\x00"
    pixels = row * side + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return head + info + palette + pixels
