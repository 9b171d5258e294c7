"""Helpers for the dashboard tests: a hand-written fake predictor, a real WSGI server in a thread, generated
photos, and headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from flask import Flask, jsonify
from werkzeug.serving import make_server

from common.labels import NUM_CLASSES
from model_serving.predictor import ModelInfo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class FakePredictor:
    """Deterministic stand-in for KerasPredictor: the class follows the image's mean brightness, and dark
    images get a flat (uncertain) distribution so ``needs_review`` shows up too."""

    def __init__(self, version: str = "7") -> None:
        self.info = ModelInfo(
            name="refund-item-classifier", version=version, alias="champion", run_id="fake-run", uri="fake"
        )
        self.calls = 0

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        images = np.asarray(images)
        out = np.full((len(images), NUM_CLASSES), 0.02, dtype=np.float32)
        for i, img in enumerate(images):
            mean = float(img.mean())
            best = int(mean / 25.6) % NUM_CLASSES
            if mean < 20:  # uncertain: spread the mass
                out[i] = 0.1
                out[i, best] = 0.19
                out[i, (best + 1) % NUM_CLASSES] = 0.01
            else:
                out[i, best] = 0.82
                out[i, (best + 3) % NUM_CLASSES] = 0.04
        return out / out.sum(axis=1, keepdims=True)

    def warm_up(self) -> np.ndarray:
        return self.predict_proba(np.zeros((1, 28, 28), dtype=np.uint8))


def png_bytes(brightness: int = 180, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A small generated 'photo': a bright item on a dark background, PNG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    arr = rng.integers(0, 15, size=(h, w), dtype=np.uint8)
    arr[h // 5 : h - h // 5, w // 4 : w - w // 4] = brightness
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def contract_api_app(predictor: FakePredictor) -> Flask:
    """TEMPORARY stand-in for ``model_serving.app.create_app`` (not written yet): the agreed JSON contract."""
    import time

    from flask import request

    from data_processing.preprocessing import preprocess_bytes
    from model_serving.dashboard import bp
    from model_serving.predictor import describe

    app = Flask("contract-api")
    app.register_blueprint(bp)
    counts = {"n": 0, "lat": []}

    @app.post("/predict")
    def predict():
        t0 = time.perf_counter()
        files = request.files.getlist("files") or request.files.getlist("file")
        imgs = np.stack([preprocess_bytes(f.read()) for f in files])
        recs = describe(predictor.predict_proba(imgs), review_threshold=0.7)
        ms = (time.perf_counter() - t0) * 1000
        counts["n"] += 1
        counts["lat"].append(ms)
        for r in recs:
            r.update(model_name=predictor.info.name, model_version=predictor.info.version, processing_ms=ms)
        return jsonify(recs[0] if "file" in request.files else {"predictions": recs})

    @app.get("/health")
    def health():
        i = predictor.info
        return jsonify(
            status="ok", ready=True, model={"name": i.name, "version": i.version, "alias": i.alias}, uptime_s=12.5
        )

    @app.get("/metrics")
    def metrics():
        lat = counts["lat"] or [0.0]
        return jsonify(
            requests_per_minute=counts["n"],
            latency_ms={
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "p99": float(np.percentile(lat, 99)),
            },
            predictions_per_class={"Trouser": 3, "Bag": 1},
        )

    @app.get("/drift-status")
    def drift():
        return jsonify(status="insufficient_data", window_size=3, reference_size=128, alpha=0.05, tests=[])

    return app


def failing_api_app(status: int = 503) -> Flask:
    """An API double whose every JSON endpoint fails (model not ready), plus the real dashboard blueprint:
    the dashboard must show the failure, not crash."""
    from model_serving.dashboard import bp

    app = Flask("failing-api")
    app.register_blueprint(bp)

    def fail():
        return jsonify(error="model_not_ready", message="the model is still loading"), status

    for rule in ("/health", "/metrics", "/drift-status"):
        app.add_url_rule(rule, rule, fail)
    app.add_url_rule("/predict", "/predict", fail, methods=["POST"])
    return app


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve ``app`` with a real multi-threaded WSGI server on a free loopback port; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Debian Chromium driven by Playwright (the caller skips when it is absent)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def collect_console_errors(page: object) -> list[str]:
    """Every console error and uncaught page exception, as text (the list fills while the page lives)."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


def canvas_painted_pixels(page: object, selector: str) -> int:
    """How many pixels of a canvas are not fully transparent (0 means the chart drew nothing)."""
    script = """(sel) => {
        const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
        return n;
    }"""
    return int(page.evaluate(script, selector))
