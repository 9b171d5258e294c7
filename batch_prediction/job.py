"""The nightly job wired from its settings: the store, the champion and its scoring engine, the night's MLflow run,
then one night (:func:`batch_prediction.night.run_night`). The script ``batch_predict`` parses the command line,
checks the store (:mod:`batch_prediction.preflight`), takes the lock, calls :func:`run` and turns its outcome into an
exit code.

The order keeps a night cheap when it has nothing to do: the store is checked, the champion resolved (a registry
lookup), the inputs listed; the model is loaded only when there is something to score."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from batch_prediction.engines import Engine
from batch_prediction.engines.local import LocalEngine
from batch_prediction.engines.ray_engine import PinnedModel, RayEngine, RayUnavailable, require_ray
from batch_prediction.night import NightOptions, NightResult, run_night
from batch_prediction.night_runs import NightTracker
from batch_prediction.reading import StoreAddress
from common.settings import Settings
from common.storage import Storage, storage_from_settings
from common.tracking import unreachable_reason
from inference.choice import ServingPath
from inference.classifier import Classifier, Thresholds
from inference.loading import load_predictor
from inference.versions import ModelInfo, resolve_model

log = logging.getLogger("batch_prediction")


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
    """One night with the current champion (the script checked the store first: :mod:`batch_prediction.preflight`).
    Raises :class:`NoModel` when the champion cannot be had, before anything is written; a night that stops on an
    exception ends its MLflow run FAILED (KILLED on an interrupt), so no run is left RUNNING, and the next invocation
    resumes it.

    ``open_store(settings)`` / ``open_tracker(tracking_uri, experiment)`` build the store and the MLflow tracker
    (default: :func:`~common.storage.storage_from_settings`, :class:`~batch_prediction.night_runs.NightTracker`).
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
    """The champion (resolved: a registry lookup) and a factory of the engine that scores with it (the local engine
    loads the model when the factory is called: only a night with work pays for it). Raises :class:`NoModel` with a
    short reason when the champion cannot be had (resolving here, loading from the factory)."""
    try:
        if options.engine == "ray":
            require_ray()
        model = resolve_model(settings.model_uri, settings.mlflow_tracking_uri)
    except RayUnavailable as exc:
        raise NoModel(str(exc)) from exc
    except Exception as exc:
        raise NoModel(no_model_message(settings, exc)) from exc

    thresholds = Thresholds.of(model, settings.review_threshold, settings.unfamiliar_threshold)
    store = StoreAddress(settings.storage_uri, settings.aws_endpoint_url)
    if options.engine == "ray":
        # Every actor loads the pinned version, whatever the alias points at meanwhile.
        pinned = PinnedModel(model.pinned_uri, settings.mlflow_tracking_uri, options.runtime)

        def make_ray(_model: ModelInfo) -> Engine:
            return RayEngine(
                store=store,
                model=pinned,
                thresholds=thresholds,
                num_cpus=options.ray_num_cpus,
                ray_address=settings.batch.ray_address,
                max_object_bytes=settings.batch.max_object_bytes,
            )

        return model, make_ray

    def make_local(info: ModelInfo) -> Engine:
        try:
            predictor = load_predictor(
                settings.model_uri,
                settings.mlflow_tracking_uri,
                info=info,
                threads=options.inference_threads,
                runtime=options.runtime,
                path=ServingPath("batch", options.batch_size),
            )
            predictor.warm_up()
        except Exception as exc:
            raise NoModel(no_model_message(settings, exc)) from exc
        log.info("model %s v%s loaded (runtime %s)", info.name, info.version, predictor.runtime_name)
        return LocalEngine(
            storage,
            Classifier(predictor, thresholds),
            address=store,
            workers=options.workers,
            max_object_bytes=settings.batch.max_object_bytes,
        )

    return model, make_local


def no_model_message(settings: Settings, exc: BaseException) -> str:
    """A short, clear reason the model could not be had: the registry's state first, the client's words last
    (one line, shortened; the caller redacts credentials)."""
    text = " ".join(str(exc).split())
    reason = unreachable_reason(exc)
    if reason is not None:
        what = f"the model registry at {settings.mlflow_tracking_uri} {reason}"
    else:
        what = f"cannot load {settings.model_uri} from {settings.mlflow_tracking_uri}"
    return f"{what}: {type(exc).__name__}: {text[:300]}"
