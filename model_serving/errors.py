"""JSON error bodies ``{"error": code, "message": ...}`` for every failure, including Flask's own 404/405/413/500."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An expected failure with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def error_response(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    g.error_code = code  # for the metrics hook
    resp = json_response({"error": code, "message": message}, status=status)
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def _http_code(exc: HTTPException) -> str:
    if isinstance(exc, RequestEntityTooLarge):
        return "body_too_large"
    return (exc.name or "http_error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if isinstance(exc, RequestEntityTooLarge):
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body exceeds the limit of {limit:,} bytes" if limit else message
        resp = error_response(status, _http_code(exc), message)
        if status == 405 and exc.get_headers():
            for key, value in exc.get_headers():
                if key.lower() == "allow":
                    resp.headers["Allow"] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
