"""The operator dashboard at ``GET /`` (plain HTML/JS served by Flask; no build step, no CDN)."""

from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index() -> Response:
    return Response(
        "<!doctype html><title>Refund Item Classifier</title><h1>Refund Item Classifier</h1>", mimetype="text/html"
    )
