"""Helpers of the serving tests: a hand-written fake predictor, image builders, the bad-upload corpus and a
real server process."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.settings import PROJECT_ROOT
from tests.support.processes import free_port, stop_process, wait_http


def item_image(level: int = 230, size: int = 28) -> np.ndarray:
    """A bright rectangle (pixel value ``level``) on black; 28x28 passes preprocessing unchanged."""
    img = np.zeros((size, size), dtype=np.uint8)
    img[size // 5 : size - size // 5, size // 4 : size - size // 4] = level
    return img


def encode(img: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (hand-made: Pillow cannot write 0x0 or bombs)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    filename: str
    expected: tuple[int, ...]  # acceptable statuses
    code: str | None = None  # expected error code when it is an error


def bad_upload_corpus() -> list[Case]:
    """The crafted corpus of the issue. Odd-but-valid inputs (RGBA, CMYK, 16-bit, EXIF-rotated) must be 200."""
    rgb = np.stack([item_image(200, 64)] * 3, axis=-1)
    png = encode(item_image())
    jpeg = encode(rgb, "JPEG", quality=90)
    gif_frames = [Image.fromarray(item_image(v)) for v in (100, 200)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    sixteen = Image.fromarray(item_image(200, 40).astype(np.uint16) * 257)  # mode I;16
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + struct.pack(">II", 10, 10) + b"\x00\x08\x00\x03" + b"\x00" * 64
    return [
        Case("empty", b"", "empty.png", (400,), "empty_image"),
        Case("random_bytes", np.random.default_rng(1).bytes(4096), "noise.png", (400,), "invalid_image"),
        Case("truncated_png", png[: len(png) // 2], "half.png", (400,), "invalid_image"),
        Case("truncated_jpeg", jpeg[: len(jpeg) // 2], "half.jpg", (400,), "invalid_image"),
        Case("text_as_png", b"this is not an image\n" * 20, "notes.png", (400,), "invalid_image"),
        Case("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "a.svg", (415,), None),
        Case("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "a.pdf", (415,), "unsupported_format"),
        Case("tiff", encode(item_image(), "TIFF"), "a.tiff", (415,), "unsupported_format"),
        Case("psd", psd, "a.psd", (415,), "unsupported_format"),
        Case("zero_by_zero", png_header_only(0, 0), "zero.png", (400,), None),
        Case("one_by_100000", encode(np.full((1, 100_000), 255, np.uint8)), "line.png", (200, 400), None),
        Case("bomb_65535", png_header_only(65535, 65535), "bomb.png", (413,), "image_too_large"),
        Case("animated_gif", gif.getvalue(), "anim.gif", (415,), "unsupported_format"),
        Case("rgba_png", encode(rgba), "rgba.png", (200,), None),
        Case("cmyk_jpeg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "cmyk.jpg", (200,), None),
        Case("gray16_png", encode(sixteen), "deep.png", (200,), None),
        Case("exif_rotated_jpeg", encode(Image.fromarray(rgb), "JPEG", exif=exif), "rot.jpg", (200,), None),
        Case("webp", encode(rgb, "WEBP"), "a.webp", (200,), None),
        Case("bmp", encode(rgb, "BMP"), "a.bmp", (200,), None),
    ]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def run_server(
    tracking_uri: str,
    tmp_dir: Path,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    ready: bool = True,
) -> Iterator[ServerProcess]:
    """``python model_serving/app.py`` on a free loopback port, serving the champion of ``tracking_uri``;
    ``ready=False``: yield as soon as the server answers HTTP at all (its model may not be loaded)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODEL_POLL_SECONDS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **(extra_env or {}),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_dir / f"server-{port}.log"
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "model_serving" / "app.py"),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--graceful-timeout",
        "60",
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_dir)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        if ready:
            wait_ready(server, workers)
        else:
            wait_http(f"{server.url}/health", timeout=60, proc=proc)
        yield server
    finally:
        stop_process(proc, timeout=60)


def wait_ready(server: ServerProcess, workers: int, timeout: float = 300.0) -> None:
    """Until every worker has loaded the model and /health answers 200."""
    import time

    import requests

    # Every worker logs when its model serves; /health alone could be answered by a worker that is ready first.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        if server.log_path.read_text(errors="replace").count("model_serving.state: serving ") >= workers:
            break
        time.sleep(0.3)
    else:
        raise TimeoutError(f"server not ready:\n{server.log()}")
    wait_http(f"{server.url}/health", timeout=timeout, proc=server.proc)
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
