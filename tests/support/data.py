"""Helpers for the data-pipeline tests: generated raw image folders and a real HTTP proxy in front of the moto
server that counts requests and can answer a share of PUTs with S3's 503 SlowDown (real HTTP, no mocks)."""

from __future__ import annotations

import http.client
import io
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from common.labels import class_slug
from data_processing.preprocessing import encode_png

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULT0001</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def item_image(label: int, seed: int, size: int = 28) -> np.ndarray:
    """A light item on black whose shape depends on the label (distinct per class, varied by seed)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    h, w = int(size * (0.3 + 0.06 * label)), int(size * (0.9 - 0.06 * label))
    top, left = (size - h) // 2, (size - w) // 2
    img[top : top + h, left : left + w] = 110 + 12 * label
    img[img > 0] += rng.integers(0, 20, size=int((img > 0).sum()), dtype=np.uint8)
    return img


def write_raw_dir(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, int]:
    """``root/<split>/<class_slug>/<index>.png`` for 10 classes; returns {rel_path: label}."""
    out: dict[str, int] = {}
    for split, n in per_class.items():
        index = 0
        for label in range(10):
            folder = root / split / class_slug(label)
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                (folder / f"{index}.png").write_bytes(encode_png(item_image(label, seed + index)))
                out[f"{split}/{class_slug(label)}/{index}.png"] = label
                index += 1
    return out


def jpeg_bytes(arr: np.ndarray, exif_orientation: int | None = None, quality: int = 95) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 forwarding to ``upstream``; counts requests by method and answers a
    ``slowdown_share`` of PUTs with a real S3 ``503 SlowDown`` (deterministic pseudo-random choice)."""

    def __init__(self, upstream: str, slowdown_share: float = 0.0, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.slowdown_share = slowdown_share
        self.counts: Counter[str] = Counter()
        self.injected = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.counts[self.command] += 1
                    fault = self.command == "PUT" and proxy._rng.random() < proxy.slowdown_share
                    proxy.injected += fault
                if fault:
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN_BODY)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.injected = 0
