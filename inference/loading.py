"""Load a model version as a :class:`~inference.predictor.Predictor`: its exported runtime when it has one that
passed parity, else the Keras graph, with the reason logged and reported; optionally keeping a local copy
(:class:`~inference.cache.ModelCache`) that a start with the registry unreachable can serve."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from inference.cache import ModelCache
from inference.export import ARTIFACT_DIR, FILES, MANIFEST, PROBE, PROBE_ATOL, load_runtime
from inference.models import ModelInfo, resolve_model
from inference.predictor import Predictor
from inference.runtimes import KerasGraphRuntime

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "exported", "keras")


class RuntimeUnavailable(RuntimeError):
    """The exported runtime cannot serve this version (missing, failed parity, or unusable here)."""


def load_predictor(
    model_uri: str,
    tracking_uri: str | None = None,
    *,
    info: ModelInfo | None = None,
    runtime: str = "auto",
    threads: int | None = None,
    cache: ModelCache | None = None,
) -> Predictor:
    """Load the concrete version ``model_uri`` names (pinned, so an alias move mid-load cannot mix versions).

    ``runtime``: ``auto`` prefers the exported runtime and falls back to the Keras graph, saying why;
    ``exported`` fails instead of falling back; ``keras`` always uses the Keras graph. ``info`` (from an earlier
    :func:`~inference.models.resolve_model`) skips the second registry lookup. ``threads``: the runtime's
    intra-op threads (default 1 for an exported runtime; TensorFlow's own default for the Keras graph).
    ``cache``: keep a copy of what was loaded there.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    info = info or resolve_model(model_uri, tracking_uri)
    reason = "the Keras graph was asked for"
    if runtime != "keras":
        try:
            return load_exported(info, tracking_uri, threads=threads or 1, cache=cache)
        except RuntimeUnavailable as exc:
            if runtime == "exported":
                raise
            reason = str(exc)
        log.warning("%s v%s serves through the Keras graph: %s", info.name, info.version, reason)
    return load_keras(info, tracking_uri, fallback_reason=reason, threads=threads, cache=cache)


def load_keras(
    info: ModelInfo,
    tracking_uri: str | None,
    *,
    fallback_reason: str | None = None,
    threads: int | None = None,
    cache: ModelCache | None = None,
) -> Predictor:
    import mlflow
    import mlflow.artifacts

    if tracking_uri:  # a models:/ URI is resolved against the process's registry, not the tracking_uri argument
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ric-keras-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=info.pinned_uri, dst_path=tmp, tracking_uri=tracking_uri)
        )
        predictor = keras_from_directory(local, info, fallback_reason=fallback_reason, threads=threads)
        _keep(cache, info, local, "keras")
    return predictor


def keras_from_directory(
    directory: Path, info: ModelInfo, *, fallback_reason: str | None = None, threads: int | None = None
) -> Predictor:
    """A predictor on the Keras graph of an MLflow Keras model folder."""
    import mlflow.keras

    from inference.runtimes import configure_tensorflow_threads
    from inference.views import tta_of

    if threads:
        configure_tensorflow_threads(threads, threads)
    model = mlflow.keras.load_model(str(directory))
    return Predictor(info, KerasGraphRuntime(model), views=len(tta_of(model)[1]), fallback_reason=fallback_reason)


def load_exported(
    info: ModelInfo, tracking_uri: str | None, *, threads: int = 1, cache: ModelCache | None = None
) -> Predictor:
    """The version's exported runtime, downloaded from its run; :class:`RuntimeUnavailable` says why not."""
    if not info.run_id:
        raise RuntimeUnavailable("not a registered version: no run holds an exported runtime")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="ric-runtime-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=info.run_id, artifact_path=ARTIFACT_DIR, dst_path=tmp, tracking_uri=tracking_uri
            )
        except (MlflowException, OSError) as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or not _exists(exc):
                raise RuntimeUnavailable(
                    f"no exported runtime in run {info.run_id} (python -m inference.export {info.pinned_uri} adds one)"
                ) from exc
            raise RuntimeUnavailable(f"could not download the exported runtime: {type(exc).__name__}") from exc
        predictor = predictor_from_directory(Path(local), info, threads=threads)
        _keep(cache, info, Path(local), "runtime")
    return predictor


def load_cached(cache: ModelCache, *, threads: int | None = None) -> Predictor | None:
    """The cache's version (exported runtime or Keras graph, whichever was loaded last), or None if none."""
    current = cache.current()
    if current is None:
        return None
    info, folder = current
    if (folder / "runtime").is_dir():
        predictor = predictor_from_directory(folder / "runtime", info, threads=threads or 1)
    else:
        predictor = keras_from_directory(folder / "keras", info, threads=threads)
    predictor.source = "cache"
    return predictor


def _keep(cache: ModelCache | None, info: ModelInfo, local: Path, kind: str) -> None:
    """Copy what was loaded into the local cache; a cache that cannot be written never fails a load."""
    if cache is None:
        return
    try:
        cache.store(info, local, kind)
    except OSError as exc:
        log.warning("could not cache %s v%s in %s: %s", info.name, info.version, cache.root, exc)


def _exists(exc: BaseException) -> bool:
    text = str(exc).lower()
    return not ("no such file" in text or "not found" in text or "does not exist" in text)


def predictor_from_directory(directory: Path, info: ModelInfo, *, threads: int = 1) -> Predictor:
    """A predictor from an export folder (``runtime.json``, the model file, ``probe.npz``)."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeUnavailable(f"no readable {MANIFEST} in the exported runtime") from exc
    if not manifest.get("passed"):
        raise RuntimeUnavailable(f"its runtime export failed parity ({manifest.get('reason', 'no reason given')})")
    kind = str(manifest.get("kind"))
    if kind not in FILES:
        raise RuntimeUnavailable(f"unknown exported runtime {kind!r}")
    try:
        runtime = load_runtime(kind, (directory / FILES[kind]).read_bytes(), threads=threads)
    except Exception as exc:  # a runtime package missing or a file it cannot read
        raise RuntimeUnavailable(f"the {kind} runtime cannot load here: {type(exc).__name__}: {exc}") from exc
    predictor = Predictor(info, runtime, views=int(manifest.get("views") or 1), export=manifest)
    _check_probe(predictor, directory / PROBE)
    return predictor


def _check_probe(predictor: Predictor, path: Path) -> None:
    """The runtime must reproduce, on this machine, what it answered on the probe images at export time."""
    try:
        with np.load(path, allow_pickle=False) as probe:
            images, want = probe["images"], probe["probs"]
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeUnavailable(f"no readable {PROBE} in the exported runtime") from exc
    got = predictor.predict_proba(images)
    diff = float(np.max(np.abs(got - want))) if len(want) else 0.0
    if got.shape != want.shape or not diff <= PROBE_ATOL:
        raise RuntimeUnavailable(f"the {predictor.runtime_name} runtime disagrees with its export probe here")
