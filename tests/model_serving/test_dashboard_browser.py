"""The dashboard in a real headless Chromium against a real WSGI server running the API.

Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) is driven through Playwright's Python API;
no browser is ever downloaded. Skips with the reason only when that browser is absent.
A screenshot of the loaded dashboard is saved to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.labels import CLASS_NAMES
from common.settings import PROJECT_ROOT
from tests.support.dashboard import (
    CHROMIUM,
    canvas_painted_pixels,
    chromium,
    collect_console_errors,
    dashboard_predictor,
    odd_api_app,
    png_bytes,
    serve,
    serving_app,
    unready_serving_app,
)
from tests.support.fakes import ScoringFakePredictor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is absent: install Debian's browser with `apt-get install -y chromium` (.ci/run does)",
    ),
]

SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "dashboard.png"
TIMEOUT_MS = 20_000  # generous: two cores shared with the rest of the suite


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    context.close()


def _photo(name: str, brightness: int | None, seed: int = 0) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": png_bytes(brightness=brightness, seed=seed)}


def _checkerboard() -> dict:
    """A 28x28 checkerboard: no garment looks like it (the scoring fake calls it unfamiliar)."""
    import io

    import numpy as np
    from PIL import Image

    board = (np.indices((28, 28)).sum(axis=0) % 2 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(board, mode="L").save(buf, format="PNG")
    return {"name": "board.png", "mimeType": "image/png", "buffer": buf.getvalue()}


def test_dashboard_shows_model_predictions_charts_and_drift(page) -> None:
    predictor = ScoringFakePredictor(version="7", rule="mean")
    app = serving_app(predictor, min_window=4)
    with serve(app) as base:
        errors = collect_console_errors(page)
        page.goto(base + "/")

        # Served model from /health.
        page.wait_for_function("() => document.getElementById('health-status').textContent === 'ready'")
        assert page.inner_text("#model-name") == "refund-item-classifier"
        assert page.inner_text("#model-version") == "7"
        assert page.inner_text("#model-alias") == "champion"

        # One photo: field `file`; the prediction card shows class, confidence and the top-3.
        page.set_input_files("#file-input", [_photo("boot.png", brightness=200)])
        card = page.locator(".result.done").first
        card.wait_for()
        assert card.locator(".result-class").inner_text() in CLASS_NAMES
        assert "confidence" in card.locator(".conf-line").inner_text()
        assert card.locator(".top3 li").count() == 3
        assert predictor.calls >= 1

        # Several photos in one request (field `files`), one dark and therefore uncertain, one not a garment at all.
        page.set_input_files(
            "#file-input",
            # (no item at all: since the photo path finds an item by texture too, a flat black item on the grainy
            # backdrop is found like any other)
            [_photo("a.png", 120, 1), _photo("b.png", 240, 2), _photo("dark.png", None, 3), _checkerboard()],
        )
        page.wait_for_function("() => document.querySelectorAll('.result.done').length === 5")
        assert "4 of 4 classified" in page.inner_text("#upload-status")
        # Each card a person must look at says why: the dark photo for low confidence, the checkerboard as unfamiliar.
        dark = page.locator('.result.done[data-file="dark.png"]')
        assert "needs review" in dark.inner_text() and "low confidence" in dark.locator(".review-reason").inner_text()
        board = page.locator('.result.done[data-file="board.png"]')
        assert "needs review" in board.inner_text()
        assert "unfamiliar" in board.locator(".review-reason").inner_text()
        assert page.locator(".result.unfamiliar").count() == 1
        assert page.locator('.result.done[data-file="b.png"] .review-reason').count() == 0

        # Live charts drew from /metrics (the upload triggers a refresh; polling continues).
        page.wait_for_function("() => Number(document.getElementById('chart-latency').dataset.rendered) > 0")
        page.wait_for_function("() => Number(document.getElementById('chart-rpm').dataset.rendered) > 0")
        for chart in ("#chart-rpm", "#chart-latency", "#chart-classes", "#chart-confidence"):
            assert canvas_painted_pixels(page, chart) > 500, chart
        # 5 photos scored: the class mix and the (de-cumulated) confidence histogram each add up to 5.
        page.wait_for_function("() => document.getElementById('chart-classes').dataset.total === '5'")
        assert page.get_attribute("#chart-confidence", "data-total") == "5"
        assert page.inner_text("#kpi-predictions") == "5"
        assert page.inner_text("#kpi-p95").endswith(" ms")
        assert page.inner_text("#kpi-rpm") != "n/a"

        # Drift panel (refreshed after each upload): 5 items pass the minimum window, so each test has a row.
        page.wait_for_function("() => document.querySelectorAll('#drift-rows tr td.num').length > 0")
        assert page.inner_text("#drift-verdict") in ("no drift", "drift detected")
        assert page.inner_text("#drift-summary").startswith("Window 5")
        assert page.locator("#drift-rows tr").count() >= 10  # KS per feature + chi-squared

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert errors == []
    assert SCREENSHOT.stat().st_size > 10_000


def test_dashboard_survives_an_api_that_is_not_ready(page) -> None:
    with serve(unready_serving_app()) as base:
        errors = collect_console_errors(page)
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('health-status').textContent.startsWith('not ready')")
        page.wait_for_function("() => document.getElementById('drift-verdict').textContent === 'unavailable'")
        assert "model_not_ready" in page.inner_text("#drift-summary")
        title = page.get_attribute("#health-status", "title") or ""
        assert "registry_unreachable" in title and "could not be reached" in title  # a code and a short reason

        page.set_input_files("#file-input", [_photo("x.png", 150)])
        page.locator(".result.failed").wait_for()
        assert "503" in page.inner_text(".result.failed .error-text")
        assert "model_not_ready" in page.inner_text(".result.failed .error-text")
        assert canvas_painted_pixels(page, "#chart-rpm") > 0  # empty state drawn, not a blank or broken canvas
        # /metrics still answers while the model is down, and counts the failed requests.
        page.wait_for_function("() => Number(document.getElementById('kpi-errors').textContent.split(' ')[0]) >= 2")
    # The browser itself reports each 503 response ("Failed to load resource"); the page's own code must not fail.
    own = [e for e in errors if "Failed to load resource" not in e]
    assert own == []


def test_dashboard_shows_na_for_answers_it_cannot_read(page) -> None:
    with serve(odd_api_app()) as base:
        errors = collect_console_errors(page)
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('health-status').textContent === 'ready'")
        assert page.inner_text("#model-version") == "n/a"
        page.wait_for_function("() => document.getElementById('rpm-hint').textContent.includes('502')")
        assert page.inner_text("#kpi-rpm") == "n/a"
        page.wait_for_function("() => document.querySelectorAll('#drift-rows tr').length === 1")
        assert "n/a" in page.inner_text("#drift-rows")

        page.set_input_files("#file-input", [_photo("x.png", 150)])
        card = page.locator(".result.done").first
        card.wait_for()
        assert card.locator(".result-class").inner_text() == "n/a"
        assert "confidence n/a" in card.inner_text()
    own = [e for e in errors if "Failed to load resource" not in e]
    assert own == []


def _gif() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="GIF")
    return buf.getvalue()


def test_dashboard_mixed_uploads_every_clients_requests_drift_readings_and_the_mlflow_link(page) -> None:
    import json

    import requests

    app = serving_app(dashboard_predictor(version="7"), min_window=4)
    with serve(app) as base:
        # Another client's predictions (curl, a script) before the page opens: the chart counted only the page's own
        # uploads (0 after 163 curl predictions).
        for i in range(5):
            files = {"file": (f"curl-{i}.png", png_bytes(brightness=150, seed=i), "image/png")}
            assert requests.post(f"{base}/predict", files=files, timeout=30).status_code == 200
        errors = collect_console_errors(page)
        page.goto(base + "/")
        page.wait_for_function(
            "() => JSON.parse(document.getElementById('chart-rpm').dataset.latest || '{}')['POST /predict'] === 5"
        )
        assert "5 POST /predict of" in page.inner_text("#rpm-hint")

        # The served version links to its page in the MLflow UI (MLFLOW_UI_URL; here a local store's `ric ui`).
        link = page.locator("#model-mlflow")
        link.wait_for(state="visible")
        assert link.get_attribute("href") == "http://127.0.0.1:5000/#/models/refund-item-classifier/versions/7"

        # One unsupported file among good ones: the good ones are classified, the bad one says why (every card said
        # "Not classified").
        gif = {"name": "scan.gif", "mimeType": "image/gif", "buffer": _gif()}
        page.set_input_files("#file-input", [_photo("a.png", 120, 1), gif, _photo("b.png", 240, 2)])
        page.wait_for_function("() => document.querySelectorAll('.result.done').length === 2")
        failed = page.locator(".result.failed")
        assert failed.count() == 1 and failed.get_attribute("data-file") == "scan.gif"
        assert "415" in failed.inner_text() and "GIF is not accepted" in failed.inner_text()
        assert "2 of 3 classified" in page.inner_text("#upload-status")

        # 7 photos unlike the reference's noise images: fired tests say what they mean, and so does the verdict.
        page.wait_for_function("() => document.querySelectorAll('#drift-rows tr.fired').length > 0")
        fired = page.locator("#drift-rows tr.fired .test-reading").first
        assert "check the returns desk's set-up" in fired.inner_text() or "unfamiliar items" in fired.inner_text()
        assert page.inner_text("#drift-reading").startswith("Drift: ")
        served = json.loads(requests.get(f"{base}/drift-status", timeout=30).text)
        assert served["reading"] == page.inner_text("#drift-reading")
        assert all(t["reading"] for t in served["tests"])
    # The browser itself reports the 415 ("Failed to load resource"); the page's own code must not fail.
    assert [e for e in errors if "Failed to load resource" not in e] == []
