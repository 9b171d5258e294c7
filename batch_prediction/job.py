"""The nightly job wired from its settings: the store, the champion and its scoring engine, the night's MLflow run,
then one night (:func:`batch_prediction.night.run_night`). The script ``batch_predict`` parses the command line,
takes the lock, calls :func:`run` and turns its outcome into an exit code."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from batch_prediction.engines import Engine
from batch_prediction.engines.local import LocalEngine
from batch_prediction.engines.ray_engine import RayEngine, RayUnavailable, require_ray
from batch_prediction.night import NightOptions, NightResult, run_night
from batch_prediction.tracking import NightTracker
from common.settings import Settings
from common.storage import Storage, storage_from_settings
from inference.choice import ServingPath
from inference.loading import load_predictor
from inference.models import ModelInfo, resolve_model

log = logging.getLogger("batch_prediction")

# A registry's words that mean "down or unreachable", and the HTTP statuses it answers with when overloaded.
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "timed out",
    "Name or service not known",
    "Failed to establish",
)
_UNAVAILABLE_STATUSES = ("429", "500", "502", "503", "504")


class NoModel(RuntimeError):
    """The champion cannot be resolved or loaded (or its engine cannot run)."""


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "local"  # local | ray
    workers: int = 2  # local: loader processes (0 = a thread in this process)
    inference_threads: int = 1  # local: threads of the inference runtime
    ray_num_cpus: int = 2  # ray: CPUs of a local Ray (ignored with RAY_ADDRESS)
    runtime: str = "auto"  # local: the fastest at the night's batch size here (inference.choice), or one by name
    batch_size: int = 1024  # images per predict call: the size the runtime is chosen for


def run(
    settings: Settings,
    options: NightOptions,
    engine: EngineOptions,
    *,
    open_store: Callable[[Settings], Storage] | None = None,
    open_tracker: Callable[[str, str], NightTracker] | None = None,
) -> NightResult:
    """One night with the current champion. Raises :class:`NoModel` (before anything is started) when the champion
    cannot be had; a night that stops on an exception ends its MLflow run FAILED (KILLED on an interrupt), so no run
    is left RUNNING, and the next invocation resumes it.

    ``open_store(settings)`` / ``open_tracker(tracking_uri, experiment)`` build the store and the MLflow tracker
    (default: :func:`~common.storage.storage_from_settings`, :class:`~batch_prediction.tracking.NightTracker`).
    """
    storage = (open_store or storage_from_settings)(settings)
    model, make_engine = open_engine(settings, storage, engine)
    tracker = (open_tracker or NightTracker)(settings.mlflow_tracking_uri, options.experiment)
    try:
        return run_night(settings, options, storage=storage, model=model, make_engine=make_engine, tracker=tracker)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            tracker.abort(killed=not isinstance(exc, Exception))
        raise


def open_engine(
    settings: Settings, storage: Storage, options: EngineOptions
) -> tuple[ModelInfo, Callable[[ModelInfo], Engine]]:
    """The champion (resolved, and loaded for the local engine) and a factory of the engine that scores with it.
    Raises :class:`NoModel` with a short reason when the champion cannot be had."""
    if options.engine == "ray":
        try:
            require_ray()
            model = resolve_model(settings.model_uri, settings.mlflow_tracking_uri)
        except RayUnavailable as exc:
            raise NoModel(str(exc)) from exc
        except Exception as exc:
            raise NoModel(no_model_message(settings, exc)) from exc
        pinned = model.pinned_uri  # every actor loads this version, whatever the alias points at meanwhile

        def make_ray(_model: ModelInfo) -> Engine:
            return RayEngine(
                storage_uri=settings.storage_uri,
                endpoint_url=settings.aws_endpoint_url,
                model_uri=pinned,
                tracking_uri=settings.mlflow_tracking_uri,
                num_cpus=options.ray_num_cpus,
                address=settings.batch.ray_address,
                max_object_bytes=settings.batch.max_object_bytes,
                runtime=options.runtime,
            )

        return model, make_ray

    try:
        predictor = load_predictor(
            settings.model_uri,
            settings.mlflow_tracking_uri,
            threads=options.inference_threads,
            runtime=options.runtime,
            path=ServingPath("batch", options.batch_size),
        )
        predictor.warm_up()
    except Exception as exc:
        raise NoModel(no_model_message(settings, exc)) from exc
    log.info("model %s v%s loaded (runtime %s)", predictor.info.name, predictor.info.version, predictor.runtime_name)

    def make_local(_model: ModelInfo) -> Engine:
        return LocalEngine(
            storage,
            predictor,
            storage_uri=settings.storage_uri,
            endpoint_url=settings.aws_endpoint_url,
            workers=options.workers,
            max_object_bytes=settings.batch.max_object_bytes,
        )

    return predictor.info, make_local


def no_model_message(settings: Settings, exc: BaseException) -> str:
    """A short, clear reason the model could not be had: the registry's state first, the client's words last
    (one line, shortened; the caller redacts credentials)."""
    text = " ".join(str(exc).split())
    status = next(
        (
            code
            for code in _UNAVAILABLE_STATUSES
            if f"{code} " in text
            or f"'{code}'" in text
            or f"status code {code}" in text
            or f"HTTP {code}" in text
            or f"{code} error" in text
        ),
        None,
    )
    if status is not None:
        what = f"the model registry at {settings.mlflow_tracking_uri} answered HTTP {status}"
    elif any(m in text for m in _UNREACHABLE):
        what = f"the model registry at {settings.mlflow_tracking_uri} is unreachable"
    else:
        what = f"cannot load {settings.model_uri} from {settings.mlflow_tracking_uri}"
    return f"{what}: {type(exc).__name__}: {text[:300]}"
