"""Where a serving process gets its model by default: the registry the settings name, and a local copy of the last
version loaded (a start with the registry down serves it).

:class:`RegistrySource` gives :class:`model_serving.state.ModelSource` its four calls; the app factory replaces any
of them for tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.settings import Settings
from inference.cache import ModelCache, cache_root
from inference.loading import load_cached, load_predictor
from inference.predictor import PredictorLike
from inference.versions import ModelInfo, resolve_model
from monitoring.reference import Reference, load_reference_for_version

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift-reference.npz"  # kept with the cached version, for a start without the registry


class RegistrySource:
    """The model ``settings.model_uri`` names in ``settings.mlflow_tracking_uri``, cached on local disk unless
    ``SERVING_MODEL_CACHE=off``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = model_cache(settings)

    def resolve(self) -> ModelInfo:
        return resolve_model(self.settings.model_uri, self.settings.mlflow_tracking_uri)

    def load(self, info: ModelInfo | None) -> PredictorLike:
        serving = self.settings.serving
        threads = serving.runtime_threads or None
        limit_blas_threads(threads)
        return load_predictor(
            self.settings.model_uri,
            self.settings.mlflow_tracking_uri,
            info=info,
            runtime=serving.runtime,
            threads=threads,
            cache=self.cache,
        )

    def load_reference(self, info: ModelInfo) -> Reference:
        reference = load_reference_for_version(info.name, info.version, self.settings.mlflow_tracking_uri)
        if self.cache is not None:
            self.cache.put_extra(info, REFERENCE_FILE, reference.to_bytes())
        return reference

    def load_cached(self) -> tuple[PredictorLike, Reference | None] | None:
        """The cached version and its drift reference; None without a cached version."""
        if self.cache is None:
            return None
        cached = load_cached(self.cache, threads=self.settings.serving.runtime_threads or None)
        if cached is None:
            return None
        return cached, cached_reference(self.cache)


def model_cache(settings: Settings) -> ModelCache | None:
    """The local model cache of ``settings.model_uri`` (``SERVING_MODEL_CACHE``; ``off``: None)."""
    where = settings.serving.model_cache
    if where.lower() == "off":
        return None
    base = Path(where) if where else Path(settings.data_dir) / "model-cache"
    return ModelCache(cache_root(base, settings.model_uri))


def cached_reference(cache: ModelCache) -> Reference | None:
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


def limit_blas_threads(n: int | None) -> None:
    """One worker process per core: cap BLAS's pool so workers do not fight over the cores (the runtime's own
    threads are capped by :func:`inference.loading.load_predictor`)."""
    if not n:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # optional: BLAS then keeps its default pool
        pass
