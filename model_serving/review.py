"""People's side of the learning loop: the review page, ``POST /labels`` and the accuracy over time.

* ``GET /review``: the keyboard-driven review page (static; its data comes from the routes below).
* ``GET /review/queue[?night=<date>/<run-id>]``: a finished night's review queue and audit sample (the latest night
  by default) with the model's answer, top 3, confidence and the label in force; ``GET /review/photo?key=`` and
  ``GET /review/input?key=`` the photo and what the model saw (THE preprocessing's 28x28, as PNG).
* ``POST /labels``: JSON ``{"labels": [{"key", "sha256", "label"}, ...], "who": "...", "idempotency_key": "..."}``
  into the labels store (:mod:`monitoring.label_store`): 200 with what was stored and each refused row's reason, 422
  when no row could be stored, 400 for a body that is not such JSON.
* ``GET /performance``: the table of nights (:mod:`monitoring.performance`) and the latest status, for the
  dashboard's chart; ``/metrics`` adds the latest as gauges (:func:`prometheus_text`, :func:`summary`).

Everything but ``/performance`` takes ``Authorization: Bearer <REVIEW_TOKEN>``, a token of its own (not the admin
token): unset, labelling is disabled (404). The store is opened on first use, so an API without one still starts.
"""

from __future__ import annotations

import hmac
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, request

from common.redact import redact
from common.settings import Settings
from model_serving.dashboard import CONTENT_SECURITY_POLICY, STATIC_DIR
from model_serving.errors import ApiError, json_response

bp = Blueprint("review", __name__)

PERFORMANCE_TTL_SECONDS = 30.0  # the table reads every night's summary: recomputed at most this often
MAX_LABELS_BODY_ROWS = 5000


@dataclass
class LoopState:
    """What the serving process keeps for the loop: the store, the labels, the registry figures, a cached table."""

    settings: Settings
    storage: Any = None
    labels: Any = None
    figures: Any = None
    table: list[Any] = field(default_factory=list)
    table_at: float = float("-inf")
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        if self.storage is None:
            from common.storage import storage_from_settings
            from monitoring.label_store import LabelStore
            from monitoring.performance import RegistryFigures

            self.storage = storage_from_settings(self.settings)
            self.labels = LabelStore(self.storage)
            self.figures = RegistryFigures(self.settings.mlflow_tracking_uri, self.settings.model_name)

    def performance(self) -> list[Any]:
        from monitoring.performance import StatusPolicy, performance_table

        with self.lock:
            if time.monotonic() - self.table_at > PERFORMANCE_TTL_SECONDS:
                # A failure is remembered as long as a result: a store or registry that is down must not slow
                # every /metrics scrape down.
                self.table_at, self.error = time.monotonic(), None
                try:
                    self.open()
                    loop = self.settings.learning
                    policy = StatusPolicy(loop.accuracy_margin, loop.accuracy_min_labels)
                    self.table = performance_table(self.storage, self.labels.current(), self.figures, policy, last=60)
                except Exception as exc:
                    self.table, self.error = [], f"{type(exc).__name__}: {exc}"
            if self.error:
                raise RuntimeError(self.error)
            return self.table

    def forget_table(self) -> None:
        with self.lock:
            self.table_at = float("-inf")


def _state() -> LoopState:
    ext = current_app.extensions
    if "ric-loop" not in ext:
        ext["ric-loop"] = LoopState(ext["ric"]["settings"])
    return ext["ric-loop"]


def _authorize() -> None:
    token = current_app.extensions["ric"]["serving"].review_token
    if not token:
        raise ApiError(404, "not_found", "labelling is disabled (set REVIEW_TOKEN to enable it)")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <REVIEW_TOKEN>'")


@bp.get("/review")
def page() -> Response:
    from flask import send_from_directory

    response = send_from_directory(STATIC_DIR, "review.html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/review/queue")
def queue() -> Response:
    _authorize()
    from monitoring.nights import AUDIT, NEEDS_REVIEW, find_night, list_nights, read_rows, read_summary

    state = _state()
    state.open()
    night = find_night(state.storage, request.args.get("night"))
    nights = [n.name for n in list_nights(state.storage)][-30:]
    if night is None:
        return json_response({"night": None, "nights": nights, "items": []})
    current = state.labels.current()
    items = []
    for source, name in (("review", NEEDS_REVIEW), ("audit", AUDIT)):
        for row in read_rows(state.storage, night, name):
            label = current.get((row["key"], row["sha256"]))
            items.append(
                {
                    "key": row["key"],
                    "sha256": row["sha256"],
                    "source": source,
                    "class_name": row["class_name"],
                    "confidence": float(row["confidence"]),
                    "top3": _json_list(row.get("top3")),
                    "label": None if label is None else label.label,
                }
            )
    summary = read_summary(state.storage, night)
    return json_response(
        {
            "night": {"name": night.name, "date": night.date, "model_version": summary.get("model", {}).get("version")},
            "nights": nights,
            "items": items,
        }
    )


def _json_list(text: str | None) -> list[Any]:
    import json

    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _photo_bytes(key: str) -> bytes:
    from common.storage import ObjectNotFound

    state = _state()
    state.open()
    prefix = state.settings.batch.input_prefix.lstrip("/")
    if not key.startswith(prefix) or ".." in key.split("/"):
        raise ApiError(404, "not_found", f"no photo {key!r} under {prefix!r}")
    try:
        return state.storage.get_bytes(key, max_bytes=state.settings.batch.max_object_bytes)
    except (ObjectNotFound, OSError) as exc:
        raise ApiError(404, "not_found", f"no photo {key!r}") from exc


@bp.get("/review/photo")
def photo() -> Response:
    _authorize()
    data = _photo_bytes(request.args.get("key", ""))
    return Response(data, mimetype=_mime(data), headers={"Cache-Control": "private, max-age=300"})


_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"BM", "image/bmp"))


def _mime(data: bytes) -> str:
    """The photo's type from its leading bytes (the formats the API accepts); else a download."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "application/octet-stream")


@bp.get("/review/input")
def model_input() -> Response:
    _authorize()
    from PIL import Image

    from data_processing.preprocessing import ImageError, preprocess_bytes

    try:
        image = preprocess_bytes(_photo_bytes(request.args.get("key", "")))
    except ImageError as exc:
        raise ApiError(422, exc.code, str(exc)) from exc
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return Response(buf.getvalue(), mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})


@bp.post("/labels")
def post_labels() -> Response:
    _authorize()
    from monitoring.label_store import ItemChecker, LabelError

    body = request.get_json(silent=True)
    rows = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ApiError(400, "bad_request", 'send JSON {"labels": [{"key", "sha256", "label"}, ...], "who": "..."}')
    if len(rows) > MAX_LABELS_BODY_ROWS:
        raise ApiError(
            413, "too_many_labels", f"{len(rows)} labels in one request; the limit is {MAX_LABELS_BODY_ROWS}"
        )
    who = body.get("who") if isinstance(body.get("who"), str) else "api"
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise ApiError(400, "bad_request", "idempotency_key must be a non-empty string of at most 200 characters")
    how = "review-page" if body.get("how") == "review-page" else "api"
    state = _state()
    state.open()
    batch = state.settings.batch
    checker = ItemChecker(state.storage, batch.input_prefix, batch.max_object_bytes)
    try:
        result = state.labels.submit(rows, who=who[:200], how=how, checker=checker, idempotency_key=key)
    except LabelError as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc
    if result.accepted:
        state.forget_table()
    return json_response(result.to_dict(), status=200 if result.accepted or not result.errors else 422)


@bp.get("/performance")
def performance() -> Response:
    from monitoring.performance import latest_status

    try:
        rows = _state().performance()
    except Exception as exc:  # no store yet, or the registry is down: the dashboard says so instead of failing
        raise ApiError(503, "performance_unavailable", redact(str(exc))) from exc
    latest = latest_status(rows)
    return json_response(
        {
            "status": latest.status if latest else "unknown",
            "reason": latest.reason if latest else "no night has enough audit labels yet",
            "nights": [r.to_dict() for r in rows],
        }
    )


def latest_figures() -> dict[str, Any] | None:
    """The latest night's expectations and the latest judged night's measurement (None when nothing is known)."""
    from monitoring.performance import latest_status

    try:
        rows = _state().performance()
    except Exception:
        return None
    if not rows:
        return None
    judged = latest_status(rows)
    last = rows[-1]
    return {
        "night": f"{last.date}/{last.run_id}",
        "expected_all": last.expected_all,
        "expected_auto": last.expected_auto,
        "measured_auto": judged.measured_auto if judged else None,
        "measured_low": judged.measured_low if judged else None,
        "measured_high": judged.measured_high if judged else None,
        "audit_labels": judged.audit_labels if judged else 0,
        "status": judged.status if judged else "unknown",
    }


def prometheus_text() -> bytes:
    """The latest accuracy figures as Prometheus gauges (appended to ``/metrics``)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    figures = latest_figures()
    registry = CollectorRegistry()
    expected = Gauge(
        "ric_accuracy_expected", "mean calibrated confidence of the latest night", ["scope"], registry=registry
    )
    measured = Gauge(
        "ric_accuracy_measured",
        "audit-measured accuracy of auto-routed items (95 % Wilson bounds)",
        ["bound"],
        registry=registry,
    )
    labels = Gauge("ric_accuracy_audit_labels", "audit labels behind the measured accuracy", registry=registry)
    status = Gauge("ric_accuracy_status", "1 for the accuracy status in force", ["status"], registry=registry)
    now = figures or {"status": "unknown"}
    for name in ("ok", "degraded", "unknown"):
        status.labels(name).set(1.0 if now["status"] == name else 0.0)
    if figures:
        for scope, key in (("all", "expected_all"), ("auto_routed", "expected_auto")):
            if figures[key] is not None:
                expected.labels(scope).set(figures[key])
        for bound, key in (("estimate", "measured_auto"), ("low", "measured_low"), ("high", "measured_high")):
            if figures[key] is not None:
                measured.labels(bound).set(figures[key])
        labels.set(figures["audit_labels"])
    return generate_latest(registry)
