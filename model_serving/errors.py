"""JSON error bodies ``{"error": code, "message": ...}`` for every failure, including Flask's own 404/405/413/500.

A body carries a stable code and a short reason written here, never an exception's text (which may hold paths,
decoder internals or a URI with credentials): details go to the log, with credentials stripped.
"""

from __future__ import annotations

import json
import logging
import traceback
from types import TracebackType
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.redact import redact
from inference.classifier import Refused

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
        return _too_large_kind(exc.__traceback__)
    return (exc.name or "http_error").lower().replace(" ", "_").replace("'", "")


def _too_large_kind(tb: TracebackType | None) -> str:
    """Which limit a werkzeug 413 is about. Werkzeug raises the same exception for the body size, the number of
    form parts and the size of one text field; the raising frame tells them apart (werkzeug 3.1: the multipart
    decoder's ``next_event`` counts parts; its ``receive_data`` and the form parser's ``parse`` size fields;
    anything else is the request body). ``tests/model_serving/test_api_hardening.py`` pins this down."""
    last = None
    while tb is not None:
        last, tb = tb.tb_frame, tb.tb_next
    if last is None:
        return "body_too_large"
    name, filename = last.f_code.co_name, last.f_code.co_filename.replace("\\", "/")
    if name == "next_event" and filename.endswith("/multipart.py"):
        return "too_many_parts"
    if (name == "receive_data" and filename.endswith("/multipart.py")) or (
        name == "parse" and filename.endswith("/formparser.py")
    ):
        return "form_field_too_large"
    return "body_too_large"


def _too_large_message(code: str, config: Any) -> str:
    if code == "too_many_parts":
        return f"the form has more than {config.get('MAX_FORM_PARTS') or 1000:,} parts"
    if code == "form_field_too_large":
        return f"a text field of the form exceeds {config.get('MAX_FORM_MEMORY_SIZE') or 500_000:,} bytes"
    limit = config.get("MAX_CONTENT_LENGTH")
    return f"the request body exceeds the limit of {limit:,} bytes" if limit else "the request body is too large"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(Refused)
    def _refused(exc: Refused) -> Response:  # an image /predict will not answer (inference.classifier)
        if exc.detail:  # the decoder's own words: for the log, not for the client
            log.info("refused %s (%s)", exc.message, redact(exc.detail))
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _http_code(exc)
        message = exc.name  # werkzeug's fixed phrase ("Not Found"), not a description that may quote input
        if isinstance(exc, RequestEntityTooLarge):
            message = _too_large_message(code, app.config)
        elif status == 404:
            message = "no such endpoint; see /openapi.json"
        elif status == 405:
            message = "method not allowed for this endpoint; see the Allow header"
        resp = error_response(status, code, message)
        if status == 405 and exc.get_headers():
            for key, value in exc.get_headers():
                if key.lower() == "allow":
                    resp.headers["Allow"] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        details = "".join(traceback.format_exception(exc))
        log.error("unhandled error: %s", redact(details))
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
