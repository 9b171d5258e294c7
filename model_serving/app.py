"""The Refund Item Classifier API: ``create_app`` (the Flask app factory) and the server entry point.

Usage: python model_serving/app.py [--host 127.0.0.1] [--port 5001] [--workers 2] [--body-timeout 10] [-v]

Starts the production server (granian; see ``model_serving/server.py`` for every flag); never Flask's
development server. Endpoints (``GET /openapi.json`` describes them): ``POST /predict``, ``GET /health``,
``GET /metrics``, ``GET /drift-status``, ``POST /admin/reload``, and the dashboard at ``GET /``.

Serving knobs (environment; ``create_app(config={...})`` overrides them):

==========================  ===========================================================  ==================
variable                    meaning                                                      default
==========================  ===========================================================  ==================
SERVING_MAX_UPLOAD_BYTES    largest request body (413 ``body_too_large`` above it)       20 MiB
SERVING_MAX_FILES           most images in one request (413 ``too_many_files``)          32
SERVING_MAX_PIXELS          most pixels per image, checked from the header (413)          50,000,000
SERVING_MAX_DECODE_PIXELS   most pixels decoded at full scale per image (JPEG: after       16,777,216
                            its reduced-scale draft) (413 ``image_too_large``)
SERVING_MAX_REQUEST_PIXELS  most pixels decoded for all images of one request (413          67,108,864
                            ``pixel_budget_exceeded``)
SERVING_DECODE_SECONDS      decoding time budget of one request (413                      10
                            ``decode_time_exceeded``)
MODEL_POLL_SECONDS          re-resolve the model alias this often (0: never)              30
ADMIN_TOKEN                 bearer token of ``POST /admin/reload`` (unset: disabled)      unset
DRIFT_WINDOW_SIZE           items in the drift window                                     500
DRIFT_MIN_WINDOW            fewer items -> ``insufficient_data``                          100
DRIFT_ALPHA                 family-wise false-alarm rate of the drift tests               0.05
DRIFT_WINDOW_DIR            shared window directory (the server sets one per start)       in-memory
SERVING_RUNTIME             auto (exported runtime, else Keras graph), exported, keras    auto
SERVING_MODEL_CACHE         local copy of the last version loaded (served if the           <DATA_DIR>/model-cache
                            registry is unreachable at start); "off" disables it
==========================  ===========================================================  ==================

Exit codes: 0 clean shutdown, 1 the server failed to start, 2 bad command line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request

from common.settings import Settings
from common.tracking import bound_registry_calls
from data_processing.preprocessing import MAX_DECODE_PIXELS, MAX_PIXELS
from inference.cache import ModelCache, cache_root
from inference.loading import RUNTIMES, load_cached, load_predictor
from inference.models import ModelInfo, resolve_model
from inference.predictor import PredictorLike
from model_serving.errors import ApiError, register_error_handlers
from model_serving.rsgi import BODY_ERROR
from model_serving.state import ServingState, runtime_of
from monitoring.reference import Reference, load_reference_for_version

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,
    "RIC_MAX_FILES": 32,
    "RIC_MAX_PIXELS": MAX_PIXELS,
    "RIC_MAX_DECODE_PIXELS": MAX_DECODE_PIXELS,
    "RIC_MAX_REQUEST_PIXELS": 4 * MAX_DECODE_PIXELS,
    "RIC_DECODE_SECONDS": 10.0,
    "RIC_POLL_SECONDS": 30.0,
    "RIC_ADMIN_TOKEN": "",
    "RIC_WINDOW_SIZE": 500,
    "RIC_MIN_WINDOW": 100,
    "RIC_DRIFT_ALPHA": 0.05,
    "RIC_WINDOW_DIR": None,
    "RIC_RUNTIME_DIR": None,
    "RIC_RUNTIME": "auto",
    "RIC_TF_THREADS": 0,  # >0: cap TensorFlow's intra/inter-op pools (the server sets 1 per worker)
    "RIC_BACKGROUND": True,  # model watcher + metrics sampler threads
    "RIC_LOAD_IN_BACKGROUND": False,  # True (the server): the first load too, so /health answers at once
    "RIC_MODEL_CACHE": "",  # a folder, "" = <DATA_DIR>/model-cache, "off" = no local copy
}
_ENV: dict[str, tuple[str, type]] = {
    "MAX_CONTENT_LENGTH": ("SERVING_MAX_UPLOAD_BYTES", int),
    "RIC_MAX_FILES": ("SERVING_MAX_FILES", int),
    "RIC_MAX_PIXELS": ("SERVING_MAX_PIXELS", int),
    "RIC_MAX_DECODE_PIXELS": ("SERVING_MAX_DECODE_PIXELS", int),
    "RIC_MAX_REQUEST_PIXELS": ("SERVING_MAX_REQUEST_PIXELS", int),
    "RIC_DECODE_SECONDS": ("SERVING_DECODE_SECONDS", float),
    "RIC_POLL_SECONDS": ("MODEL_POLL_SECONDS", float),
    "RIC_ADMIN_TOKEN": ("ADMIN_TOKEN", str),
    "RIC_WINDOW_SIZE": ("DRIFT_WINDOW_SIZE", int),
    "RIC_MIN_WINDOW": ("DRIFT_MIN_WINDOW", int),
    "RIC_DRIFT_ALPHA": ("DRIFT_ALPHA", float),
    "RIC_WINDOW_DIR": ("DRIFT_WINDOW_DIR", str),
    "RIC_RUNTIME_DIR": ("SERVING_RUNTIME_DIR", str),
    "RIC_RUNTIME": ("SERVING_RUNTIME", str),
    "RIC_MODEL_CACHE": ("SERVING_MODEL_CACHE", str),
    "RIC_TF_THREADS": ("SERVING_TF_THREADS", int),
}


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The serving knobs: defaults, then the environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    out = dict(DEFAULTS)
    for key, (var, cast) in _ENV.items():
        value = env.get(var)
        if value not in (None, ""):
            try:
                out[key] = cast(value)
            except ValueError as exc:
                raise ValueError(f"{var} must be a {cast.__name__}, got {value!r}") from exc
    return out


def create_app(
    predictor: PredictorLike | None = None,
    *,
    settings: Settings | None = None,
    config: Mapping[str, Any] | None = None,
    loader: Any = None,
    resolver: Any = None,
    reference_loader: Any = None,
) -> Flask:
    """Build the API.

    ``predictor`` given: it is warmed up and served at once (tests inject a fake; no registry involved).
    Otherwise the model ``settings.model_uri`` names is loaded from ``settings.mlflow_tracking_uri``,
    synchronously (if that fails, ``/health`` is 503 and a background thread retries); with ``RIC_BACKGROUND``
    a thread then watches the alias for a new version.
    ``loader(info) -> Predictor``, ``resolver() -> ModelInfo`` and ``reference_loader(info) -> Reference``
    replace the registry-backed defaults.
    """
    from monitoring.drift import DriftConfig
    from monitoring.metrics import ServingMetrics

    settings = settings or Settings.from_env()
    cfg = config_from_env()
    cfg.update(config or {})
    if cfg["RIC_RUNTIME"] not in RUNTIMES:
        raise ValueError(f"SERVING_RUNTIME must be one of {', '.join(RUNTIMES)}, got {cfg['RIC_RUNTIME']!r}")
    app = Flask(__name__, static_folder=None)
    app.config.update(cfg)
    app.json.sort_keys = False

    tracking_uri = settings.mlflow_tracking_uri
    cache = _model_cache(cfg, settings) if predictor is None else None
    cache_loader = None
    if predictor is None and resolver is None and loader is None:
        bound_registry_calls()  # an unreachable registry fails a check in seconds, not minutes of retries
    if predictor is None:
        if resolver is None:

            def resolver() -> ModelInfo:
                return resolve_model(settings.model_uri, tracking_uri)

        if loader is None:

            def loader(info: ModelInfo | None) -> PredictorLike:
                threads = int(cfg["RIC_TF_THREADS"]) or None
                _limit_blas_threads(threads)
                return load_predictor(
                    settings.model_uri,
                    tracking_uri,
                    info=info,
                    runtime=str(cfg["RIC_RUNTIME"]),
                    threads=threads,
                    cache=cache,
                )

            if cache is not None:

                def cache_loader() -> tuple[PredictorLike, Any] | None:
                    cached = load_cached(cache, threads=int(cfg["RIC_TF_THREADS"]) or None)
                    if cached is None:
                        return None
                    data = cache.extra(REFERENCE_FILE)
                    return cached, (Reference.from_bytes(data) if data else None)

        if reference_loader is None:

            def reference_loader(info: ModelInfo) -> Any:
                reference = load_reference_for_version(info.name, info.version, tracking_uri)
                if cache is not None:  # kept with the cached version, for a start without the registry
                    cache.put_extra(info, REFERENCE_FILE, reference.to_bytes())
                return reference

    drift_config = DriftConfig(
        alpha=float(cfg["RIC_DRIFT_ALPHA"]),
        min_window=int(cfg["RIC_MIN_WINDOW"]),
        window_size=int(cfg["RIC_WINDOW_SIZE"]),
    )
    window_dir = Path(cfg["RIC_WINDOW_DIR"]) if cfg["RIC_WINDOW_DIR"] else None

    def window_factory(info: ModelInfo) -> Any:
        from monitoring.window import FeatureWindow

        # One window per served version: after a swap the old version's items are not compared with the
        # new version's reference. The directory is shared by all worker processes of the server.
        directory = window_dir / _slug(f"{info.name}-v{info.version}") if window_dir else None
        return FeatureWindow(drift_config.window_size, directory)

    runtime_dir = Path(cfg["RIC_RUNTIME_DIR"]) if cfg["RIC_RUNTIME_DIR"] else None
    background = bool(cfg["RIC_BACKGROUND"])
    metrics = ServingMetrics(start_sampler=background)
    state = ServingState(
        loader=loader if predictor is None else None,
        resolver=resolver if predictor is None else None,
        reference_loader=reference_loader,
        window_factory=window_factory,
        poll_seconds=float(cfg["RIC_POLL_SECONDS"]),
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
        "drift_config": drift_config,
        "review_threshold": settings.review_threshold,
        "max_files": int(cfg["RIC_MAX_FILES"]),
        "max_pixels": int(cfg["RIC_MAX_PIXELS"]),
        "admin_token": cfg["RIC_ADMIN_TOKEN"] or "",
    }

    from model_serving.dashboard import bp as dashboard_bp
    from model_serving.routes import bp as api_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(dashboard_bp)
    register_error_handlers(app)
    _install_metrics_hooks(app, metrics)

    if predictor is not None:
        state.install(predictor)
    elif cfg["RIC_LOAD_IN_BACKGROUND"]:
        # The server: /health answers (503, loading) from the first moment, whatever the registry does; the
        # watcher loads the model (or the local cache) and keeps it current.
        state.start(load_now=True)
    else:
        # Embedded use and tests: the app returns with its model loaded (or /health saying why not).
        state.check_for_update()
        if background:
            state.start()
    return app


REFERENCE_FILE = "drift-reference.npz"


def _model_cache(cfg: Mapping[str, Any], settings: Settings) -> ModelCache | None:
    where = str(cfg["RIC_MODEL_CACHE"] or "")
    if where.lower() == "off":
        return None
    base = Path(where) if where else Path(settings.data_dir) / "model-cache"
    return ModelCache(cache_root(base, settings.model_uri))


_BODY_ERRORS = {
    "body_too_large": (413, "body_too_large", "the request body exceeds the server's limit"),
    "request_timeout": (408, "request_timeout", "the request body did not arrive in time"),
    "bad_content_length": (400, "bad_request", "the Content-Length header is not a number"),
}


def _install_metrics_hooks(app: Flask, metrics: Any) -> None:
    perf = time.perf_counter

    @app.before_request
    def _start_timer() -> None:
        g.t0 = perf()
        body_error = request.environ.get(BODY_ERROR)
        if body_error is not None:  # the RSGI front did not (or could not) read the body: answer why
            raise ApiError(*_BODY_ERRORS[body_error])

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
    from model_serving.server import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
