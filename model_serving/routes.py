"""The JSON API: ``POST /predict``, ``GET /health``, ``GET /metrics``, ``GET /drift-status``,
``GET /openapi.json`` and ``POST /admin/reload``. Routes only wire: ``/predict`` hands the uploads to one call,
:meth:`inference.classifier.Classifier.classify` (bytes -> THE preprocessing -> the served predictor -> records), and
counts its answer; everything else lives in the state and metrics objects."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import Blueprint, Response, current_app, g, request
from werkzeug.datastructures import FileStorage

from common.settings import ServingSettings
from common.tracking import version_url
from data_processing.preprocessing import (
    MAX_DECODE_PIXELS,
    MAX_PIXELS,
    MAX_REQUEST_PIXELS,
    MAX_REQUEST_WORK,
    REQUEST_DECODE_SECONDS,
    DecodeBudget,
)
from inference.classifier import Answer, Classifier, Thresholds
from inference.records import review_threshold_for, unfamiliar_threshold_for
from inference.versions import ModelInfo
from model_serving.errors import ApiError, json_response
from model_serving.state import runtime_of

if TYPE_CHECKING:
    from model_serving.metrics import ServingMetrics
    from model_serving.state import DriftFeed

bp = Blueprint("api", __name__)


def _ext() -> dict[str, Any]:
    return current_app.extensions["ric"]


@bp.post("/predict")
def predict() -> Response:
    ext = _ext()
    t0 = time.perf_counter()
    served = ext["state"].served
    if served is None:
        raise ApiError(503, "model_not_ready", "the model is not loaded yet; retry shortly", retry_after=5)
    serving = ext["serving"]
    single, many = request.files.getlist("file"), request.files.getlist("files")
    check_uploads(single + many, serving.max_files)
    thresholds = Thresholds.of(served.info, ext["review_threshold"], ext["unfamiliar_threshold"])
    classifier = Classifier(served.predictor, thresholds, max_pixels=serving.max_pixels or MAX_PIXELS)
    answer = classifier.classify(single + many, request_decode_budget(serving))  # Refused: errors.py answers
    known_test = is_test_traffic(serving)
    if not known_test:  # a smoke test or benchmark with the token keeps out of the drift window and the class mix
        observe(ext["metrics"], served.feed, answer)
    common = answer_fields(served.info, time.perf_counter() - t0, ext["metrics"].requests_per_minute())
    records = answer.records
    if len(single) == 1 and not many:
        body = {**records[0], **common}
    else:
        body = {"predictions": records, "count": len(records), "needs_review": answer.needs_review, **common}
    resp = json_response(body)
    if known_test:
        resp.headers[TEST_TRAFFIC_HEADER] = "excluded"
    return resp


def check_uploads(uploads: list[FileStorage], max_files: int) -> None:
    """Refuse a request without images, or with more than ``max_files`` of them."""
    if not uploads and request.mimetype == "multipart/form-data" and request.content_length and not request.form:
        # werkzeug drops a form whose part headers are not UTF-8 (a Latin-1 file name) without a word; saying
        # "send field 'file'" to a client that did was no help.
        raise ApiError(
            400, "bad_multipart", "the multipart body could not be read: its part headers (file names) must be UTF-8"
        )
    if not uploads:
        raise ApiError(400, "no_file", "send the image as multipart/form-data field 'file' (or several as 'files')")
    if len(uploads) > max_files:
        raise ApiError(413, "too_many_files", f"{len(uploads)} files in one request; the limit is {max_files}")


def observe(metrics: ServingMetrics, feed: DriftFeed, answer: Answer) -> None:
    """Count the answer in the metrics (class mix, confidence, reviews, unfamiliar items) and feed the drift window."""
    records, unfamiliar = answer.records, answer.unfamiliar
    metrics.record_predictions(
        (r["class_id"] for r in records),
        (r["confidence"] for r in records),
        answer.needs_review,
        int(np.nansum(unfamiliar)),
        scored_for_unfamiliarity=int(np.isfinite(unfamiliar).sum()),
    )
    feed.add(answer.images, answer.scores.probs, unfamiliar)


def answer_fields(info: ModelInfo, elapsed: float, requests_per_minute: int) -> dict[str, Any]:
    """The fields every /predict answer carries besides its records: the version and the time taken."""
    return {
        "model_name": info.name,
        "model_version": info.version,
        "processing_ms": round(elapsed * 1000, 3),
        # The seed API's fields, kept for its clients: seconds, and the whole server's requests in the last minute.
        "processing_time": round(elapsed, 6),
        "requests_per_minute": requests_per_minute,
    }


TEST_TRAFFIC_HEADER = "X-Test-Traffic"


def is_test_traffic(serving: ServingSettings) -> bool:
    """The request carries ``X-Test-Traffic: <SERVING_TEST_TRAFFIC_TOKEN>`` (compared in constant time); without a
    configured token the header means nothing, so no client can hide its traffic from the monitoring."""
    token = serving.test_traffic_token
    given = request.headers.get(TEST_TRAFFIC_HEADER)
    return bool(token) and given is not None and hmac.compare_digest(given.encode(), token.encode())


def request_decode_budget(serving: ServingSettings) -> DecodeBudget:
    """One request's decoding budget: pixels per image, pixels and decoding work for all its images, seconds (a
    hard stop; unset settings: the preprocessing's defaults)."""
    return DecodeBudget(
        max_image_pixels=serving.max_decode_pixels or MAX_DECODE_PIXELS,
        max_total_pixels=serving.max_request_pixels or MAX_REQUEST_PIXELS,
        max_seconds=serving.decode_seconds or REQUEST_DECODE_SECONDS,
        max_total_work=MAX_REQUEST_WORK,
    )


@bp.get("/health")
def health() -> Response:
    ext = _ext()
    body = ext["state"].health()
    if not body["ready"]:
        g.error_code = "model_not_ready"
    model = body.get("model")
    if model and model.get("run_id"):  # a registered version: its page in the MLflow UI (MLFLOW_UI_URL)
        model["mlflow_url"] = version_url(ext["settings"].mlflow_ui_url, model["name"], model["version"])
    return json_response(body, status=200 if body["ready"] else 503)


@bp.get("/metrics")
def metrics() -> Response:
    ext = _ext()
    fmt = request.args.get("format", "").lower()
    if fmt not in ("", "json", "prometheus"):
        raise ApiError(400, "bad_format", "format must be 'json' or 'prometheus'")
    if fmt == "prometheus" or (not fmt and _prefers_text()):
        from model_serving import review
        from model_serving.metrics import PROMETHEUS_CONTENT_TYPE

        text = ext["metrics"].prometheus_text() + review.prometheus_text()  # the learning loop's accuracy gauges
        return Response(text, status=200, content_type=PROMETHEUS_CONTENT_TYPE)
    state = ext["state"]
    served = state.served
    extra = {
        "model": None
        if served is None
        else {"name": served.info.name, "version": served.info.version, **runtime_of(served.predictor)},
        "ready": served is not None,
        "review_threshold": review_threshold_for(ext["review_threshold"], None if served is None else served.info),
        "unfamiliar_threshold": unfamiliar_threshold_for(
            ext["unfamiliar_threshold"], None if served is None else served.info
        ),
    }
    from model_serving import review

    extra["accuracy"] = review.latest_figures()
    return json_response(ext["metrics"].summary(extra))


def _prefers_text() -> bool:
    accept = request.accept_mimetypes
    best = accept.best_match(["application/json", "text/plain", "application/openmetrics-text"])
    return best in ("text/plain", "application/openmetrics-text") and accept.quality(best) > accept.quality(
        "application/json"
    )


@bp.get("/drift-status")
def drift_status() -> Response:
    ext = _ext()
    served = ext["state"].served
    if served is None:
        raise ApiError(503, "model_not_ready", "the model is not loaded yet; retry shortly", retry_after=5)
    if served.reference is None:
        raise ApiError(
            503,
            "reference_unavailable",
            f"no drift reference for {served.info.name} v{served.info.version}: {served.reference_error}",
        )
    return json_response(ext["drift_reporter"].report(served))  # computed off the request (drift_status.py)


@bp.get("/openapi.json")
def openapi() -> Response:
    from model_serving.openapi import build_spec

    return json_response(build_spec())


@bp.post("/admin/reload")
def admin_reload() -> Response:
    ext = _ext()
    token = ext["serving"].admin_token
    if not token:
        raise ApiError(404, "not_found", "admin reload is disabled (set ADMIN_TOKEN to enable it)")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <ADMIN_TOKEN>'")
    state = ext["state"]
    state.request_reload()  # the watcher threads ask the registry; a request never does
    served = state.served
    g.reloaded = True
    body: dict[str, Any] = {
        "requested": True,
        "model_version": served.info.version if served else None,
        "error": state.error[0] if state.error else None,
    }
    return json_response(body, status=202)
