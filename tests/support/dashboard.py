"""Helpers for the dashboard tests: a hand-written fake predictor, a real WSGI server in a thread, generated
photos, and headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from flask import Flask
from werkzeug.serving import make_server

from inference.versions import ModelInfo
from tests.support.api import serving_settings
from tests.support.fakes import FakePredictor

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


def dashboard_predictor(version: str = "7") -> FakePredictor:
    """The dashboard tests' model: classes follow the mean brightness, dark images are uncertain."""
    return FakePredictor(version, rule="mean", run_id="fake-run")


def png_bytes(brightness: int | None = 180, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A small generated 'photo': an item of ``brightness`` on a dark, grainy background (None: no item at all),
    PNG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    arr = rng.integers(0, 15, size=(h, w), dtype=np.uint8)
    if brightness is not None:
        arr[h // 5 : h - h // 5, w // 4 : w - w // 4] = brightness
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def tiny_reference(predictor: FakePredictor, n: int = 64) -> object:
    """A drift reference for the fake model, built like training builds one (generated images, its softmax)."""
    from monitoring.reference import build_reference

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return build_reference(images, predictor.predict_proba(images), source="dashboard-tests")


def serving_app(predictor: FakePredictor, *, min_window: int = 4) -> Flask:
    """The real API (``create_app``) serving the fake model, with a drift reference and a small minimum window
    so a handful of uploads already yields a drift verdict."""
    from model_serving.factory import create_app

    reference = tiny_reference(predictor)
    return create_app(
        predictor=predictor,
        settings=serving_settings(drift_min_window=min_window, drift_window_size=500),
        background=False,
        reference_loader=lambda info: reference,
    )


def unready_serving_app() -> Flask:
    """The real API whose model cannot be loaded (the registry is unreachable): every model endpoint is 503."""
    from model_serving.factory import create_app

    def resolver() -> ModelInfo:
        raise ConnectionError("MLflow registry unreachable")

    def loader(info: ModelInfo | None) -> FakePredictor:
        raise AssertionError("never called: resolving fails first")

    return create_app(background=False, resolver=resolver, loader=loader)


def odd_api_app() -> Flask:
    """An API double answering with shapes the dashboard does not expect: empty JSON objects, a proxy's HTML
    error page, numbers as strings. The dashboard must show "n/a" where it cannot read a value, never throw."""
    from flask import Response, jsonify

    from model_serving.dashboard import bp

    app = Flask("odd-api")
    app.register_blueprint(bp)
    app.add_url_rule("/health", "health", lambda: jsonify({}))
    app.add_url_rule(
        "/metrics", "metrics", lambda: Response("<html><body>502 Bad Gateway</body></html>", 502, mimetype="text/html")
    )
    app.add_url_rule(
        "/drift-status", "drift", lambda: jsonify(status="ok", tests=[{"name": "ks:x", "p_value": "x"}, 3])
    )
    app.add_url_rule("/predict", "predict", lambda: jsonify({"top3": "none"}), methods=["POST"])
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
