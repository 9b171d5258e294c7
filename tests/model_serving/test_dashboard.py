"""The dashboard page and its assets, through Flask's test client (no browser): served, self-contained
(no CDN, works offline), locked down by a Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from model_serving.dashboard import CONTENT_SECURITY_POLICY, STATIC_DIR, STATIC_URL_PATH, bp


@pytest.fixture
def client():
    app = Flask("dashboard-only")
    app.register_blueprint(bp)
    return app.test_client()


def _asset_urls(html: str) -> list[str]:
    """What the page loads: every ``src``, and the ``href`` of ``<link>`` (an ``<a>`` is a link to follow, not an
    asset: the review page's, checked apart)."""
    return re.findall(r'<(?!a\s)[a-z]+\s[^>]*?(?:src|href)="([^"]+)"', html)


def test_index_serves_the_dashboard_page_with_a_strict_csp(client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "<title>Refund Item Classifier" in html
    for element_id in ("file-input", "chart-rpm", "chart-latency", "chart-classes", "drift-rows", "model-version"):
        assert f'id="{element_id}"' in html
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_every_asset_the_page_references_is_served_from_the_app(client) -> None:
    html = client.get("/").get_data(as_text=True)
    urls = _asset_urls(html)
    assert {
        f"{STATIC_URL_PATH}/dashboard.js",
        f"{STATIC_URL_PATH}/charts.js",
        f"{STATIC_URL_PATH}/dashboard.css",
    } <= set(urls)
    expected_types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for url in urls:
        assert url.startswith(STATIC_URL_PATH + "/"), f"{url} is not served by the dashboard itself"
        resp = client.get(url)
        assert resp.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert resp.mimetype == expected_types[suffix], url
        resp.close()
    links = re.findall(r'<a\s[^>]*?href="([^"]+)"', html)
    assert links == ["/review"]  # the review page (model_serving.review), on this server: no other origin


def test_no_asset_loads_anything_from_another_origin() -> None:
    """Works offline: no CDN, no web fonts, no remote script, style or image anywhere in the static files."""
    offenders = []
    for path in sorted(STATIC_DIR.iterdir()):
        body = path.read_text(encoding="utf-8")
        body = body.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, never fetched
        for match in re.finditer(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", body, flags=re.IGNORECASE):
            offenders.append(f"{path.name}: {match.group(0)}")
        if "@import" in body or "url(" in body:
            offenders.append(f"{path.name}: external CSS reference")
    assert offenders == []


def test_favicon_is_answered_instead_of_a_404(client) -> None:
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200
    assert resp.mimetype == "image/svg+xml"
    assert b"<svg" in resp.get_data()
