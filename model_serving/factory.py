"""The Refund Item Classifier API's app factory: :func:`create_app` builds the Flask app of one worker process.

Configuration (the settings), extensions (the serving state, metrics and drift reporter under
``app.extensions["ric"]``, the request hooks), blueprints (the API in :mod:`model_serving.routes`, the dashboard,
the review page). Endpoints (``GET /openapi.json`` describes them): ``POST /predict``, ``GET /health``,
``GET /metrics``, ``GET /drift-status``, ``POST /admin/reload``, and the dashboard at ``GET /``. The app's knobs are
:class:`common.settings.ServingSettings` (``python -m common.settings`` lists them with their variables and current
values). The server (:mod:`model_serving.server`) calls it in each worker; tests and benchmarks call it directly.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from flask import Flask, Response, current_app, g, request

from common.settings import ServingSettings, Settings
from common.tracking import bound_mlflow_calls
from inference.predictor import PredictorLike
from inference.versions import ModelInfo
from model_serving.dashboard import bp as dashboard_bp
from model_serving.drift_status import DriftReporter
from model_serving.errors import ApiError, register_error_handlers
from model_serving.metrics import ServingMetrics
from model_serving.review import bp as review_bp
from model_serving.routes import bp as api_bp
from model_serving.rsgi import BODY_ERROR
from model_serving.source import RegistrySource
from model_serving.state import Loader, ModelSource, ReferenceLoader, Resolver, ServingState
from model_serving.window import FeatureWindow
from monitoring.drift import DriftConfig


def create_app(
    predictor: PredictorLike | None = None,
    *,
    settings: Settings | None = None,
    background: bool = True,
    load_in_background: bool = False,
    loader: Loader | None = None,
    resolver: Resolver | None = None,
    reference_loader: ReferenceLoader | None = None,
) -> Flask:
    """Build the API from ``settings`` (default: the environment's).

    ``predictor`` given: it is warmed up and served at once (tests inject a fake; no registry involved).
    Otherwise the model ``settings.model_uri`` names is loaded from ``settings.mlflow_tracking_uri``: before this
    returns (if that fails, ``/health`` is 503 and says why), or, with ``load_in_background`` (the server), by the
    watcher thread, so ``/health`` answers from the first moment. With ``background``, threads watch the alias for
    a new version and sample the process metrics. ``loader(info) -> Predictor``, ``resolver() -> ModelInfo`` and
    ``reference_loader(info) -> Reference`` replace the registry-backed defaults (tests).
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.serving.max_upload_bytes
    app.json.sort_keys = False

    source = model_source(settings, predictor, loader=loader, resolver=resolver, reference_loader=reference_loader)
    metrics = ServingMetrics(start_sampler=background)
    state = serving_state(settings.serving, source, metrics)
    init_extensions(app, settings, state, metrics)

    app.register_blueprint(api_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(review_bp)
    register_error_handlers(app)
    init_request_hooks(app)

    state.begin(predictor, in_background=load_in_background, watch=background)
    return app


def model_source(
    settings: Settings,
    predictor: PredictorLike | None,
    *,
    loader: Loader | None,
    resolver: Resolver | None,
    reference_loader: ReferenceLoader | None,
) -> ModelSource:
    """The registry-backed calls (:class:`model_serving.source.RegistrySource`), any of them replaced by the one
    given; with ``predictor`` given, only ``reference_loader``: that predictor is served and never replaced."""
    if predictor is not None:
        return ModelSource(load_reference=reference_loader)
    if loader is None and resolver is None:
        bound_mlflow_calls()  # an unreachable registry fails a check in seconds, not minutes of retries
    registry = RegistrySource(settings)
    return ModelSource(
        load=loader if loader is not None else registry.load,
        resolve=resolver if resolver is not None else registry.resolve,
        load_reference=reference_loader if reference_loader is not None else registry.load_reference,
        # the cached copy stands in for the registry's loader only
        load_cached=registry.load_cached if loader is None and registry.cache is not None else None,
    )


def serving_state(serving: ServingSettings, source: ModelSource, metrics: ServingMetrics) -> ServingState:
    """The process's model slot: one drift window per served version, the metrics told of each swap."""
    return ServingState(
        source,
        window_factory=partial(version_window, serving.drift_window_size, serving.window_dir),
        poll_seconds=serving.poll_seconds,
        reload_file=serving.runtime_dir / "reload-request" if serving.runtime_dir else None,
        on_install=metrics.show_served,
    )


def version_window(size: int, window_dir: Path | None, info: ModelInfo) -> FeatureWindow:
    """The drift window of one served version: after a swap the old version's items are not compared with the new
    version's reference. The directory is shared by all worker processes of the server."""
    return FeatureWindow(size, window_dir / _slug(f"{info.name}-v{info.version}") if window_dir else None)


def init_extensions(app: Flask, settings: Settings, state: ServingState, metrics: ServingMetrics) -> None:
    """What the blueprints read from ``current_app.extensions["ric"]``."""
    serving = settings.serving
    drift_config = DriftConfig(
        alpha=serving.drift_alpha, min_window=serving.drift_min_window, window_size=serving.drift_window_size
    )
    app.extensions["ric"] = {
        "state": state,
        "metrics": metrics,
        "settings": settings,
        "serving": serving,
        "drift_config": drift_config,
        "drift_reporter": DriftReporter(drift_config),
        "review_threshold": settings.review_threshold,
        "unfamiliar_threshold": settings.unfamiliar_threshold,
    }


_BODY_ERRORS: dict[str, tuple[int, str, str, int | None]] = {
    "body_too_large": (413, "body_too_large", "the request body exceeds the server's limit", None),
    "request_timeout": (
        408,
        "request_timeout",
        "the request body stopped arriving, or arrived slower than the server's minimum rate",
        None,
    ),
    "bad_content_length": (400, "bad_request", "the Content-Length header is not a valid length", None),
    "server_busy": (503, "server_busy", "the server is receiving too many uploads right now; retry shortly", 1),
    "client_busy": (429, "too_many_uploads", "this client has too many uploads in flight; retry shortly", 1),
}


def init_request_hooks(app: Flask) -> None:
    """Every request is timed and counted in the metrics; one whose body the RSGI front refused is answered why."""
    app.before_request(start_request)
    app.after_request(record_request)


def start_request() -> None:
    g.t0 = time.perf_counter()
    body_error = request.environ.get(BODY_ERROR)
    if body_error is not None:  # the RSGI front did not (or could not) read the body: answer why
        status, code, message, retry_after = _BODY_ERRORS[body_error]
        raise ApiError(status, code, message, retry_after=retry_after)


def record_request(resp: Response) -> Response:
    t0 = g.get("t0")
    rule = request.url_rule
    endpoint = rule.rule if rule is not None else "unmatched"
    seconds = time.perf_counter() - t0 if t0 else 0.0
    metrics = current_app.extensions["ric"]["metrics"]
    metrics.record_request(endpoint, request.method, resp.status_code, seconds, g.get("error_code"))
    return resp


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
