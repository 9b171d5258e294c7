"""Run ONE request through the API in a fresh process and report what it cost: status, error code, pixels decoded
and peak-RSS growth. Used by tests/data_processing/test_decode_bounds.py
(``python -m tests.support.decode_probe PAYLOAD...``).

Pixels decoded are counted by wrapping Pillow's ``ImageFile.load`` (what was really decoded, whatever the code under
test does); peak RSS is the kernel's high-water mark (``VmHWM``), reset right before the request, so the growth is
that request's own peak above what the process held before it.

The API decodes large images in a child process (:mod:`data_processing.sandbox`), where this process could count
neither their pixels nor their memory; here they run in process instead, through the very function the child runs
(``sandbox_child._serve_one``), so what is measured is the same decoding. The sandbox itself is tested on its own."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(paths: list[str]) -> None:
    from PIL import ImageFile

    pixels = [0]
    original = ImageFile.ImageFile.load

    def counting_load(self):  # wraps Pillow's own method
        if getattr(self, "tile", None) and not getattr(self, "_probe_counted", False):
            self._probe_counted = True  # load() may be called more than once per image
            pixels[0] += self.size[0] * self.size[1]
        return original(self)

    ImageFile.ImageFile.load = counting_load
    _decode_in_process()

    from model_serving.factory import create_app
    from tests.support.api import encode, item_image
    from tests.support.fakes import FakePredictor

    app = create_app(FakePredictor(), background=False)
    client = app.test_client()
    warm = client.post("/predict", data={"file": (io.BytesIO(encode(item_image())), "w.png")})
    assert warm.status_code == 200, warm.get_json()
    payloads = [Path(p).read_bytes() for p in paths]
    pixels[0] = 0
    field = "file" if len(payloads) == 1 else "files"
    data = {field: [(io.BytesIO(b), f"{i}.img") for i, b in enumerate(payloads)]}
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before_kb = _status_kb("VmRSS")
    r = client.post("/predict", data=data, content_type="multipart/form-data")
    growth_kb = _status_kb("VmHWM") - before_kb
    body = r.get_json()
    print(
        json.dumps(
            {
                "status": r.status_code,
                "code": body.get("error") if r.status_code != 200 else None,
                "message": body.get("message") if r.status_code != 200 else None,
                "pixels_decoded": pixels[0],
                "rss_growth_mb": growth_kb / 1024,
            }
        )
    )


def _decode_in_process() -> None:
    import numpy as np

    from data_processing import preprocessing, sandbox, sandbox_child

    class InProcess:
        def preprocess(self, data: bytes, *, max_pixels: int, max_image_pixels: int, timeout: float) -> np.ndarray:
            status, body = sandbox_child._serve_one(data, max_pixels, max_image_pixels)
            if status:
                raise sandbox._error_from(json.loads(body))
            return np.frombuffer(body, dtype=np.uint8).reshape(preprocessing.SIZE, preprocessing.SIZE)

    sandbox.shared_sandbox = InProcess


if __name__ == "__main__":
    main(sys.argv[1:])
