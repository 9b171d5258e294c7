"""What a serving process holds: the model being served, its drift reference and window, and how it changes.

A :class:`Served` bundle (predictor, model info, reference, feature window) is immutable and replaced as a
whole, so a request that started on version N finishes on version N while version N+1 is swapped in
(a single attribute assignment; no lock on the request path).

Hot swap: a background thread re-resolves the alias (``models:/name@champion``) every ``poll_seconds`` and,
when it names another version, loads and warms it up *before* swapping. The first load can run in that thread
too (``start(load_now=True)``), so a worker answers ``/health`` (503, with a short reason) at once, whatever the
registry does. ``ModelSource.load_cached`` gives the last version this server loaded (kept on local disk): a server
start serves it at once (:meth:`ServingState.serve_cached`, before the registry is asked: a hanging registry kept a
cache start from being ready for 34.5 s), and a start that finds the registry unreachable keeps serving it until the
registry answers again; ``/health`` says so. A damaged drift reference in the cache costs the drift status only.
``request_reload()`` (behind ``POST /admin/reload``) wakes this process's watcher and touches a reload file in the
runtime directory that every worker process's watcher checks (once a second), and returns: all workers check
within about a second. The registry is only ever contacted from these threads, never from a request (a reload with
the registry unreachable froze a worker for 58 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.predictor import PredictorLike as Predictor
from inference.predictor import Scores, scores_of
from inference.versions import ModelInfo
from model_serving.window import FeatureWindow
from monitoring.reference import Reference

log = logging.getLogger(__name__)

Loader = Callable[[ModelInfo | None], Predictor]
Resolver = Callable[[], ModelInfo]
ReferenceLoader = Callable[[ModelInfo], "Reference | None"]
CacheLoader = Callable[[], "tuple[Predictor, Reference | None] | None"]  # (predictor, drift reference), None: no cache

# What /health and the log say when a check fails: a stable code and a short reason, never an exception's text
# (which can hold a tracking URI with credentials); the details go to the log, credentials masked.
NO_MODEL = ("no_model", "the registry has no model version under the model URI yet")
REGISTRY_UNREACHABLE = ("registry_unreachable", "the model registry could not be reached")
LOAD_FAILED = ("load_failed", "the model version could not be loaded")


class DriftFeed:
    """Scored items on their way into the drift window, in batches.

    ``item_features`` costs about as much for 64 items as for one (many small numpy calls), so the request
    path only appends (images, probs); features are computed per ``batch_items`` items, by the watcher thread
    about once a second, and before every snapshot. Items wait at most about a second before other worker
    processes can see them (a worker killed outright loses that second's items, never more)."""

    def __init__(self, window: FeatureWindow, batch_items: int = 64) -> None:
        self.window = window
        self.batch_items = batch_items
        self._lock = threading.Lock()
        self._images: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._unfamiliar: list[np.ndarray] = []
        self._n = 0

    def add(self, images: np.ndarray, probs: np.ndarray, unfamiliar: np.ndarray | None = None) -> None:
        """``unfamiliar``: per item, 1.0 / 0.0 (NaN or None: its model has no unfamiliarity score)."""
        with self._lock:
            self._images.append(images)
            self._probs.append(probs)
            self._unfamiliar.append(np.full(len(images), np.nan) if unfamiliar is None else unfamiliar)
            self._n += len(images)
            full = self._n >= self.batch_items
        if full:
            self.flush()

    def flush(self) -> None:
        from monitoring.features import item_features

        with self._lock:
            if not self._n:
                return
            images, probs = np.concatenate(self._images), np.concatenate(self._probs)
            unfamiliar = np.concatenate(self._unfamiliar).astype(np.float64)
            self._images, self._probs, self._unfamiliar, self._n = [], [], [], 0
        self.window.add(item_features(images, probs, unfamiliar))

    def snapshot(self) -> dict[str, np.ndarray]:
        self.flush()
        return self.window.snapshot()


@dataclass(frozen=True)
class Served:
    predictor: Predictor
    info: ModelInfo
    predict: Callable[[np.ndarray], Scores]  # 28x28 uint8 images -> probabilities and unfamiliarity
    feed: DriftFeed
    reference: Reference | None = None
    reference_error: str | None = None
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ModelSource:
    """Where a process's model comes from; every call runs off the request path (start-up, the watcher thread).

    ``load(info) -> Predictor`` (None: the served model never changes), ``resolve() -> ModelInfo`` (the version the
    model URI names now), ``load_reference(info) -> Reference`` (its drift reference), ``load_cached() ->
    (Predictor, Reference or None) or None`` (the local copy of the last version loaded)."""

    load: Loader | None = None
    resolve: Resolver | None = None
    load_reference: ReferenceLoader | None = None
    load_cached: CacheLoader | None = None


class ServingState:
    """The model slot of one process plus the background thread that keeps it current."""

    def __init__(
        self,
        source: ModelSource,
        *,
        window_factory: Callable[[ModelInfo], FeatureWindow],
        poll_seconds: float = 30.0,
        reload_file: Path | None = None,
        on_install: Callable[[Served], None] | None = None,
    ) -> None:
        self.source = source
        self.window_factory = window_factory
        self.poll_seconds = poll_seconds
        self.reload_file = reload_file
        self.on_install = on_install
        self.served: Served | None = None
        self.error: tuple[str, str] | None = None  # (code, reason) of the last failed check
        self.started = time.time()
        self._swap_lock = threading.Lock()  # one load at a time (poller vs admin reload)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._reload_seen = self._reload_mtime()
        self._load_now = False
        self._reload_now = False

    # ---- installing a model --------------------------------------------------------------------------------
    def install(
        self, predictor: Predictor, *, reference: Reference | None = None, reference_error: str | None = None
    ) -> Served:
        """Warm up ``predictor``, load its reference (unless given, or ``reference_error`` says why there is none)
        and make it the served model."""
        warm_up = getattr(predictor, "warm_up", None)
        if callable(warm_up):  # the predictor's own check (Predictor.warm_up): it proves the model answers
            warm_up()
        info = predictor.info
        ref_error = reference_error
        if reference is not None or ref_error is not None:
            pass
        elif self.source.load_reference is not None:
            try:
                reference = self.source.load_reference(info)
            except Exception as exc:  # a model without a reference still serves; /drift-status says why
                ref_error = "its drift reference could not be loaded"
                log.warning("no drift reference for %s v%s: %s: %s", info.name, info.version, type(exc).__name__, exc)
        elif reference is None:
            ref_error = "no drift reference is configured"
        served = Served(
            predictor=predictor,
            info=info,
            predict=lambda images: scores_of(predictor, images),
            feed=DriftFeed(self.window_factory(info)),
            reference=reference,
            reference_error=ref_error,
        )
        previous, self.served, self.error = self.served, served, None
        if self.on_install is not None:
            self.on_install(served)
        if previous is not None:
            log.info("now serving %s v%s (was v%s)", info.name, info.version, previous.info.version)
        else:
            log.info("serving %s v%s", info.name, info.version)
        return served

    def check_for_update(self) -> bool:
        """Load the version the model URI names now if it differs from the served one. True if swapped."""
        load, resolve = self.source.load, self.source.resolve
        if load is None:
            return False
        with self._swap_lock:
            try:
                target = resolve() if resolve is not None else None
            except Exception as exc:  # keep serving what is served; report the problem in /health
                self._failed(NO_MODEL if _is_missing(exc) else REGISTRY_UNREACHABLE, exc)
                if self.served is None and not _is_missing(exc) and self.serve_cached():
                    self.error = REGISTRY_UNREACHABLE
                return False
            current = self.served
            if current is not None and target is not None and _same_version(current.info, target):
                if _source(current.predictor) == "cache":  # the registry answers again, naming the cached version
                    current.predictor.source = "registry"
                    log.info("the registry answers again; %s v%s is still current", target.name, target.version)
                self.error = None
                return False
            try:
                self.install(load(target))
                return True
            except Exception as exc:
                self._failed(LOAD_FAILED, exc)
                return False

    def _failed(self, error: tuple[str, str], exc: BaseException) -> None:
        self.error = error
        log.warning("model check failed (%s): %s: %s", error[0], type(exc).__name__, exc)

    def serve_cached(self) -> bool:
        """Serve the local copy of the last version loaded, if there is one and nothing is served; no registry
        call. A cached drift reference that is missing or damaged costs only the drift status."""
        if self.source.load_cached is None or self.served is not None:
            return False
        try:
            cached = self.source.load_cached()
        except Exception as exc:
            log.warning("the cached model could not be loaded: %s: %s", type(exc).__name__, exc)
            return False
        if cached is None:
            return False
        predictor, reference = cached
        missing = None if reference is not None else "the local model cache holds no readable drift reference"
        self.install(predictor, reference=reference, reference_error=missing)
        info = predictor.info
        log.warning("serving the cached %s v%s until the registry confirms it", info.name, info.version)
        return True

    def request_reload(self) -> None:
        """Have every worker check the registry now: this process's watcher is woken, the others see the reload
        file. Returns at once; the outcome shows in ``/health``."""
        if self.reload_file is not None:
            with contextlib.suppress(OSError):
                self.reload_file.parent.mkdir(parents=True, exist_ok=True)
                self.reload_file.write_text(str(time.time_ns()))
        if self._thread is not None and self._thread.is_alive():
            self._reload_now = True
            self._wake.set()
        else:  # an embedded app without its watcher: a one-off check, still off the request
            threading.Thread(target=self.check_for_update, name="model-reload", daemon=True).start()

    def begin(self, predictor: Predictor | None = None, *, in_background: bool = False, watch: bool = True) -> None:
        """Start serving: ``predictor`` at once if given (it never changes); else, ``in_background`` (the server), the
        cached copy now and the registry from the watcher thread's first check, so ``/health`` answers from the first
        moment; otherwise (embedded use, tests) the registry's version now, then the watcher if ``watch``."""
        if predictor is not None:
            self.install(predictor)
        elif in_background:
            # A worker serves its local copy of the last version loaded before it takes a request (a respawned
            # worker answered 503 model_not_ready for ~3 s), and never waits on the registry for it; without a copy,
            # /health answers (503, loading) from the first moment. The watcher then asks the registry.
            self.serve_cached()
            self.start(load_now=True)
        else:
            self.check_for_update()
            if watch:
                self.start()

    # ---- background thread ---------------------------------------------------------------------------------
    def start(self, *, load_now: bool = False) -> None:
        """Keep the served model current in a daemon thread; ``load_now``: its first check runs at once (else after
        a short retry delay when nothing is served, or ``poll_seconds``)."""
        if self._thread is None and self.source.load is not None:
            self._load_now = load_now
            self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _reload_mtime(self) -> float:
        if self.reload_file is None:
            return 0.0
        try:
            return self.reload_file.stat().st_mtime_ns
        except OSError:
            return 0.0

    def _run(self) -> None:
        retry = 2.0
        if self._load_now:
            next_poll = time.monotonic()
        elif self.served is None:
            next_poll = time.monotonic() + retry
        else:
            next_poll = time.monotonic() + self.poll_seconds if self.poll_seconds > 0 else float("inf")
        while not self._stop.is_set():
            now = time.monotonic()
            mtime = self._reload_mtime()
            due = now >= next_poll or mtime != self._reload_seen or self._reload_now
            if due:
                self._reload_seen, self._reload_now = mtime, False
                self.check_for_update()
                if self.served is None or self.error is not None:
                    # Nothing loaded yet (no champion, registry down) or serving the cache: retry, backing off.
                    next_poll = time.monotonic() + retry
                    retry = min(retry * 2, max(self.poll_seconds, 2.0))
                elif self.poll_seconds > 0:
                    next_poll = time.monotonic() + self.poll_seconds
                else:
                    next_poll = float("inf")
            served = self.served
            if served is not None:
                with contextlib.suppress(Exception):  # disk trouble: the window retries, serving goes on
                    served.feed.flush()
            self._wake.wait(1.0)
            self._wake.clear()

    # ---- status --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.served is not None

    def health(self) -> dict[str, Any]:
        served = self.served
        out: dict[str, Any] = {
            # "healthy" is the seed API's word for ready, kept for its clients.
            "status": "healthy" if served else ("error" if self.error else "loading"),
            "live": True,
            "ready": served is not None,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "model": None,
        }
        if served is not None:
            out["model"] = {
                "name": served.info.name,
                "version": served.info.version,
                "alias": served.info.alias,
                "run_id": served.info.run_id,
                "uri": served.info.uri,
                "loaded_at": served.loaded_at,
                **runtime_of(served.predictor),
                "drift_reference": served.reference is not None,
            }
        if self.error:
            out["error"], out["reason"] = self.error
        return out


def _same_version(a: ModelInfo, b: ModelInfo) -> bool:
    return a.name == b.name and a.version == b.version


def _source(predictor: Any) -> str:
    return str(getattr(predictor, "source", "registry"))


def _is_missing(exc: BaseException) -> bool:
    """The registry answered that the model or alias does not exist (as opposed to not answering)."""
    code = str(getattr(exc, "error_code", ""))
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def runtime_of(predictor: Any) -> dict[str, Any]:
    """How the served version runs (a fake predictor in tests has no runtime: its class name stands in)."""
    describe = getattr(predictor, "describe_runtime", None)
    if callable(describe):
        return describe()
    return {"runtime": type(predictor).__name__, "views": 1, "fallback_reason": None, "source": _source(predictor)}
