"""Hostile images of the decode-amplification findings (tiny files that declare huge pixel counts), written
without ever holding their pixels in memory, and the probe that measures one request in its own process."""

from __future__ import annotations

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
