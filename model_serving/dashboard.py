"""The operator dashboard at ``GET /``: plain HTML/JS/CSS served by Flask (no build step, no CDN, works offline).

The page is static; everything live comes from the API's own JSON endpoints, polled by
``static/dashboard.js``: ``/health`` (served model), ``/metrics`` (traffic, latency, class mix),
``/drift-status`` (drift verdict per test) and ``POST /predict`` (uploads). The app registers ``bp``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Its own URL path, so it never collides with an app-level ``/static`` route.
STATIC_URL_PATH = "/dashboard/static"

# Everything is same-origin; uploads are previewed through blob: URLs. Nothing may load from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

bp = Blueprint("dashboard", __name__, static_folder=str(STATIC_DIR), static_url_path=STATIC_URL_PATH)


@bp.get("/")
def index() -> Response:
    """The dashboard page itself (its scripts and styles come from ``STATIC_URL_PATH``)."""
    response = send_from_directory(STATIC_DIR, "dashboard.html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it unprompted; answering avoids a 404 in every operator's console."""
    return send_from_directory(STATIC_DIR, "favicon.svg", mimetype="image/svg+xml", max_age=86400)
