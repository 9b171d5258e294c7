"""The Refund Item Classifier API: ``create_app``, the Flask app factory.

Usage: python model_serving/app.py [--host 127.0.0.1] [--port 5001] [--workers 2] [--body-timeout 10] [-v]

The server module (:mod:`model_serving.server`, granian) is the entry point; running this file runs it (every flag
is in its ``--help``), never Flask's development server. Endpoints (``GET /openapi.json`` describes them):
``POST /predict``, ``GET /health``, ``GET /metrics``, ``GET /drift-status``, ``POST /admin/reload``, and the
dashboard at ``GET /``. The app's knobs are :class:`common.settings.ServingSettings` (``python -m
common.settings`` lists them with their variables and current values).

Exit codes: those of the server: 0 clean shutdown, 1 the server failed to start, 2 bad command line.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request

from common.settings import Settings
from common.tracking import bound_mlflow_calls
from inference.cache import ModelCache, cache_root
from inference.loading import load_cached, load_predictor
from inference.models import ModelInfo, resolve_model
from inference.predictor import PredictorLike
from model_serving.drift_status import DriftReporter
from model_serving.errors import ApiError, register_error_handlers
from model_serving.metrics import ServingMetrics
from model_serving.rsgi import BODY_ERROR
from model_serving.state import ServingState, runtime_of
from model_serving.window import FeatureWindow
from monitoring.drift import DriftConfig
from monitoring.reference import Reference, load_reference_for_version

log = logging.getLogger(__name__)


def create_app(
    predictor: PredictorLike | None = None,
    *,
    settings: Settings | None = None,
    background: bool = True,
    load_in_background: bool = False,
    loader: Any = None,
    resolver: Any = None,
    reference_loader: Any = None,
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
    cfg = settings.serving
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_upload_bytes
    app.json.sort_keys = False

    tracking_uri = settings.mlflow_tracking_uri
    cache = _model_cache(settings) if predictor is None else None
    cache_loader = None
    if predictor is None and resolver is None and loader is None:
        bound_mlflow_calls()  # an unreachable registry fails a check in seconds, not minutes of retries
    if predictor is None:
        if resolver is None:

            def resolver() -> ModelInfo:
                return resolve_model(settings.model_uri, tracking_uri)

        if loader is None:

            def loader(info: ModelInfo | None) -> PredictorLike:
                threads = cfg.runtime_threads or None
                _limit_blas_threads(threads)
                return load_predictor(
                    settings.model_uri, tracking_uri, info=info, runtime=cfg.runtime, threads=threads, cache=cache
                )

            if cache is not None:

                def cache_loader() -> tuple[PredictorLike, Any] | None:
                    cached = load_cached(cache, threads=cfg.runtime_threads or None)
                    if cached is None:
                        return None
                    return cached, _cached_reference(cache)

        if reference_loader is None:

            def reference_loader(info: ModelInfo) -> Any:
                reference = load_reference_for_version(info.name, info.version, tracking_uri)
                if cache is not None:  # kept with the cached version, for a start without the registry
                    cache.put_extra(info, REFERENCE_FILE, reference.to_bytes())
                return reference

    drift_config = DriftConfig(
        alpha=cfg.drift_alpha, min_window=cfg.drift_min_window, window_size=cfg.drift_window_size
    )
    window_dir = cfg.window_dir

    def window_factory(info: ModelInfo) -> Any:
        # One window per served version: after a swap the old version's items are not compared with the
        # new version's reference. The directory is shared by all worker processes of the server.
        directory = window_dir / _slug(f"{info.name}-v{info.version}") if window_dir else None
        return FeatureWindow(drift_config.window_size, directory)

    runtime_dir = cfg.runtime_dir
    metrics = ServingMetrics(start_sampler=background)
    state = ServingState(
        loader=loader if predictor is None else None,
        resolver=resolver if predictor is None else None,
        reference_loader=reference_loader,
        window_factory=window_factory,
        poll_seconds=cfg.poll_seconds,
        reload_file=runtime_dir / "reload-request" if runtime_dir else None,
        cache_loader=cache_loader,
        on_install=lambda served: metrics.set_served_model(
            served.info.name, served.info.version, str(runtime_of(served.predictor)["runtime"])
        ),
    )
    app.extensions["ric"] = {
        "state": state,
        "metrics": metrics,
        "settings": settings,
        "serving": cfg,
        "drift_config": drift_config,
        "drift_reporter": DriftReporter(drift_config),
        "review_threshold": settings.review_threshold,
        "unfamiliar_threshold": settings.unfamiliar_threshold,
    }

    from model_serving.dashboard import bp as dashboard_bp  # the blueprints import this module's helpers
    from model_serving.review import bp as review_bp
    from model_serving.routes import bp as api_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(review_bp)
    register_error_handlers(app)
    _install_metrics_hooks(app, metrics)

    if predictor is not None:
        state.install(predictor)
    elif load_in_background:
        # The server: a worker serves its local copy of the last version loaded before it takes a request (a
        # respawned worker answered 503 model_not_ready for ~3 s), and never waits on the registry for it; without
        # a copy, /health answers (503, loading) from the first moment. The watcher then asks the registry.
        state.serve_cached()
        state.start(load_now=True)
    else:
        # Embedded use and tests: the app returns with its model loaded (or /health saying why not).
        state.check_for_update()
        if background:
            state.start()
    return app


REFERENCE_FILE = "drift-reference.npz"


def _cached_reference(cache: ModelCache) -> Reference | None:
    """The cached version's drift reference; None when it is missing or damaged (a truncated file stopped the
    cached model from serving at all; now only /drift-status says it has no reference)."""
    data = cache.extra(REFERENCE_FILE)
    if not data:
        return None
    try:
        return Reference.from_bytes(data)
    except Exception as exc:  # zipfile.BadZipFile, a missing array, ...: the model itself is fine
        log.warning("the cached drift reference is damaged, drift status unavailable: %s: %s", type(exc).__name__, exc)
        return None


def _model_cache(settings: Settings) -> ModelCache | None:
    where = settings.serving.model_cache
    if where.lower() == "off":
        return None
    base = Path(where) if where else Path(settings.data_dir) / "model-cache"
    return ModelCache(cache_root(base, settings.model_uri))


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


def _install_metrics_hooks(app: Flask, metrics: Any) -> None:
    perf = time.perf_counter

    @app.before_request
    def _start_timer() -> None:
        g.t0 = perf()
        body_error = request.environ.get(BODY_ERROR)
        if body_error is not None:  # the RSGI front did not (or could not) read the body: answer why
            status, code, message, retry_after = _BODY_ERRORS[body_error]
            raise ApiError(status, code, message, retry_after=retry_after)

    @app.after_request
    def _record(resp: Response) -> Response:
        t0 = g.get("t0")
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        metrics.record_request(
            endpoint, request.method, resp.status_code, perf() - t0 if t0 else 0.0, g.get("error_code")
        )
        return resp


def _limit_blas_threads(n: int | None) -> None:
    """One worker process per core: cap BLAS's pool so workers do not fight over the cores (the runtime's own
    threads are capped by :func:`inference.loading.load_predictor`)."""
    if not n:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # optional: BLAS then keeps its default pool
        pass


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def main(argv: list[str] | None = None) -> int:
    """``python model_serving/app.py`` (the product's documented command) runs the server's command line.

    Imported late and by name: the server module imports this factory, and this module must not import it back."""
    return int(importlib.import_module("model_serving.server").main(argv))


if __name__ == "__main__":
    raise SystemExit(main())
