"""Load a model version as a :class:`~inference.predictor.Predictor`: the fastest of its runtimes that passed parity
on this CPU for the path that serves it (:mod:`inference.choice`), else the Keras graph, with the reason logged and
reported; optionally keeping a local copy (:class:`~inference.cache.ModelCache`) that a start with the registry
unreachable can serve."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.hardware import detect_cpu
from inference.cache import ModelCache
from inference.choice import API, ChoiceCache, RuntimeChoice, ServingPath, choose
from inference.exporting import ARTIFACT_DIR, CANDIDATES, FILES, MANIFEST, NUM_PROBS, PROBE, PROBE_ATOL, load_runtime
from inference.predictor import Exported, Predictor
from inference.runtimes import KerasGraphRuntime, Runtime
from inference.versions import ModelInfo, resolve_model

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "exported", "keras", *CANDIDATES)


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
    path: ServingPath = API,
) -> Predictor:
    """Load the concrete version ``model_uri`` names (pinned, so an alias move mid-load cannot mix versions).

    ``runtime``: ``auto`` times every runtime of the version's export that passed parity and the Keras graph on
    this CPU, at ``path``'s batch size (the API's 1, the night's ``--batch-size``; :mod:`inference.choice`), and
    serves the fastest (a choice kept in ``cache``'s folder, so a restart only loads the winner); a version without an
    exported runtime serves through the Keras graph, saying why. ``exported`` serves the export's preferred runtime
    and fails instead of falling back; ``litert-int8``, ``litert``, ``onnx`` serve that one (failing likewise);
    ``keras`` always the Keras graph. ``info`` (from an earlier :func:`~inference.versions.resolve_model`) skips the
    second registry lookup. ``threads``: the runtime's intra-op threads (default 1 for an exported runtime;
    TensorFlow's own default for the Keras graph). ``cache``: keep a copy of what was loaded there.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not isinstance(path, ServingPath) or path.batch < 1:
        raise ValueError(f"path must be a ServingPath with a positive batch, got {path!r}")
    info = info or resolve_model(model_uri, tracking_uri)
    if runtime == "keras":
        return load_keras(info, tracking_uri, threads=threads, cache=cache, forced=path)
    if runtime != "auto":
        kind = None if runtime == "exported" else runtime
        return load_exported(info, tracking_uri, threads=threads or 1, cache=cache, kind=kind, forced=path)
    return _load_fastest(info, tracking_uri, threads=threads, cache=cache, path=path)


def _load_fastest(
    info: ModelInfo, tracking_uri: str | None, *, threads: int | None, cache: ModelCache | None, path: ServingPath
) -> Predictor:
    """The fastest runtime of the version for ``path`` on this CPU (see :func:`load_predictor`)."""
    import mlflow.artifacts

    cpu = detect_cpu().describe()
    n_threads = threads or 1
    with tempfile.TemporaryDirectory(prefix="ric-runtime-") as tmp:
        try:
            export_dir, manifest = _download_export(info, tracking_uri, Path(tmp) / "export")
        except RuntimeUnavailable as exc:
            log.warning("%s v%s serves through the Keras graph: %s", info.name, info.version, exc)
            return load_keras(info, tracking_uri, fallback_reason=str(exc), threads=threads, cache=cache)
        keras_dir: list[Path] = []

        def keras_graph() -> Runtime:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=info.pinned_uri, dst_path=str(Path(tmp) / "keras"), tracking_uri=tracking_uri
            )
            keras_dir.append(Path(local))
            return _keras_runtime(Path(local), threads)[0]

        candidates: dict[str, Callable[[], Runtime]] = {
            kind: functools.partial(_checked_runtime, export_dir, manifest, kind, n_threads)
            for kind in _passed_kinds(manifest)
        }
        candidates["keras-graph"] = keras_graph
        choices = ChoiceCache(cache.root / CHOICES_FILE) if cache is not None else None
        key = ChoiceCache.key(cpu, info.run_id or info.version, path, n_threads)
        with _choice_lock(choices):
            earlier = choices.get(key) if choices is not None else None
            if earlier is not None and earlier.chosen in candidates:
                choice, runtime = earlier, candidates[earlier.chosen]()
            else:
                choice, runtime = choose(candidates, path=path, threads=n_threads, cpu=cpu)
                if choices is not None:
                    choices.put(key, choice)
        kind = None if choice.chosen == "keras-graph" else choice.chosen
        views = int(manifest.get("views") or 1)
        predictor = Predictor(info, runtime, views=views, exported=Exported(manifest, kind), choice=choice.to_dict())
        if kind is None:
            _keep(cache, info, keras_dir[-1], "keras")
        else:
            _keep(cache, info, export_dir, "runtime")
    return predictor


def _checked_runtime(directory: Path, manifest: dict[str, Any], kind: str, threads: int) -> Runtime:
    """Exported runtime ``kind``, once it has reproduced its export-time answers on the probe images here."""
    runtime = _exported_runtime(directory, manifest, kind, threads)
    probe = Predictor(ModelInfo("probe", "0", None, None, ""), runtime, exported=Exported(manifest))
    _check_probe(probe, directory / PROBE, kind)
    return runtime


CHOICES_FILE = "runtime-choices.json"


@contextlib.contextmanager
def _choice_lock(choices: ChoiceCache | None) -> Iterator[None]:
    """One process at a time measures (the server's workers start together: they would time each other)."""
    if choices is None:
        yield
        return
    from filelock import FileLock

    choices.path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(choices.path) + ".lock", timeout=600):
        yield


def _passed_kinds(manifest: dict[str, Any]) -> list[str]:
    """The runtimes of an export that passed parity, preferred first (an export made before every passing runtime
    was kept lists only its one)."""
    if not manifest.get("passed"):
        return []
    entries = manifest.get("runtimes") or [{"kind": manifest.get("kind")}]
    return [str(e.get("kind")) for e in entries if e.get("kind") in FILES]


def _entry(manifest: dict[str, Any], kind: str) -> dict[str, str]:
    for e in manifest.get("runtimes") or []:
        if e.get("kind") == kind:
            return {"file": str(e.get("file") or FILES[kind]), "probe": str(e.get("probe") or "probs")}
    if manifest.get("kind") == kind:  # an export of one runtime: its own file name and probe answers
        return {"file": str(manifest.get("file") or FILES[kind]), "probe": "probs"}
    raise RuntimeUnavailable(f"the export has no {kind} runtime that passed parity")


def _exported_runtime(directory: Path, manifest: dict[str, Any], kind: str, threads: int) -> Runtime:
    entry = _entry(manifest, kind)
    try:
        return load_runtime(kind, (directory / entry["file"]).read_bytes(), threads=threads)
    except Exception as exc:  # a runtime package missing or a file it cannot read
        raise RuntimeUnavailable(f"the {kind} runtime cannot load here: {type(exc).__name__}: {exc}") from exc


def load_keras(
    info: ModelInfo,
    tracking_uri: str | None,
    *,
    fallback_reason: str | None = None,
    threads: int | None = None,
    cache: ModelCache | None = None,
    forced: ServingPath | None = None,
) -> Predictor:
    """The version through its Keras graph; ``forced`` (a path) when it was configured rather than chosen."""
    import mlflow
    import mlflow.artifacts

    if tracking_uri:  # a models:/ URI is resolved against the process's registry, not the tracking_uri argument
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ric-keras-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=info.pinned_uri, dst_path=tmp, tracking_uri=tracking_uri)
        )
        predictor = keras_from_directory(local, info, fallback_reason=fallback_reason, threads=threads)
        if forced is not None:
            predictor.choice = _forced(forced, "keras-graph", threads or 1)
        _keep(cache, info, local, "keras")
    return predictor


def _keras_runtime(directory: Path, threads: int | None) -> tuple[Runtime, int]:
    """The Keras graph of an MLflow Keras model folder, and how many test-time views it averages."""
    import mlflow.keras

    from inference.runtimes import configure_tensorflow_threads
    from inference.tta import tta_of

    if threads:
        configure_tensorflow_threads(threads, threads)
    model = mlflow.keras.load_model(str(directory))
    return KerasGraphRuntime(model), len(tta_of(model)[1])


def keras_from_directory(
    directory: Path, info: ModelInfo, *, fallback_reason: str | None = None, threads: int | None = None
) -> Predictor:
    """A predictor on the Keras graph of an MLflow Keras model folder."""
    runtime, views = _keras_runtime(directory, threads)
    return Predictor(info, runtime, views=views, fallback_reason=fallback_reason)


def _download_export(info: ModelInfo, tracking_uri: str | None, dst: Path) -> tuple[Path, dict[str, Any]]:
    """The version's ``runtime/`` folder and its manifest; :class:`RuntimeUnavailable` says why not."""
    if not info.run_id:
        raise RuntimeUnavailable("not a registered version: no run holds an exported runtime")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=info.run_id, artifact_path=ARTIFACT_DIR, dst_path=str(dst), tracking_uri=tracking_uri
        )
    except (MlflowException, OSError) as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or not _exists(exc):
            raise RuntimeUnavailable(
                f"no exported runtime in run {info.run_id} (python -m inference.export {info.pinned_uri} adds one)"
            ) from exc
        raise RuntimeUnavailable(f"could not download the exported runtime: {type(exc).__name__}") from exc
    return Path(local), _manifest(Path(local))


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeUnavailable(f"no readable {MANIFEST} in the exported runtime") from exc
    if not manifest.get("passed"):
        raise RuntimeUnavailable(f"its runtime export failed parity ({manifest.get('reason', 'no reason given')})")
    return manifest


def load_exported(
    info: ModelInfo,
    tracking_uri: str | None,
    *,
    threads: int = 1,
    cache: ModelCache | None = None,
    kind: str | None = None,
    forced: ServingPath | None = None,
) -> Predictor:
    """The version's exported runtime ``kind`` (default: the export's preferred), downloaded from its run;
    :class:`RuntimeUnavailable` says why not. ``forced``: the path it was configured for."""
    with tempfile.TemporaryDirectory(prefix="ric-runtime-") as tmp:
        local, _ = _download_export(info, tracking_uri, Path(tmp))
        predictor = predictor_from_directory(local, info, threads=threads, kind=kind)
        if forced is not None:
            predictor.choice = _forced(forced, predictor.export_kind, threads)
        _keep(cache, info, local, "runtime")
    return predictor


def _forced(path: ServingPath, kind: str, threads: int) -> dict[str, Any]:
    return RuntimeChoice(path.name, path.batch, threads, kind, how="forced").to_dict()


def load_cached(cache: ModelCache, *, threads: int | None = None) -> Predictor | None:
    """The cache's version (exported runtime or Keras graph, whichever was loaded last), or None if none; an exported
    one runs the runtime the last load chose on this CPU for the API."""
    current = cache.current()
    if current is None:
        return None
    info, folder = current
    if (folder / "runtime").is_dir():
        earlier = _cached_choice(cache, info, threads or 1)
        kind = earlier.chosen if earlier is not None and earlier.chosen != "keras-graph" else None
        predictor = predictor_from_directory(folder / "runtime", info, threads=threads or 1, kind=kind)
        predictor.choice = earlier.to_dict() if kind is not None and earlier is not None else None
    else:
        predictor = keras_from_directory(folder / "keras", info, threads=threads)
    predictor.source = "cache"
    return predictor


def _cached_choice(cache: ModelCache, info: ModelInfo, threads: int) -> RuntimeChoice | None:
    """The runtime an earlier load chose for ``info`` on this CPU for the API, if one did."""
    key = ChoiceCache.key(detect_cpu().describe(), info.run_id or info.version, API, threads)
    return ChoiceCache(cache.root / CHOICES_FILE).get(key)


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


def predictor_from_directory(
    directory: Path, info: ModelInfo, *, threads: int = 1, kind: str | None = None
) -> Predictor:
    """A predictor from an export folder (``runtime.json``, the model files, ``probe.npz``): runtime ``kind``, by
    default the export's preferred one."""
    manifest = _manifest(directory)
    kind = kind or str(manifest.get("kind"))
    if kind not in FILES:
        raise RuntimeUnavailable(f"unknown exported runtime {kind!r}")
    runtime = _exported_runtime(directory, manifest, kind, threads)
    predictor = Predictor(info, runtime, views=int(manifest.get("views") or 1), exported=Exported(manifest, kind))
    _check_probe(predictor, directory / PROBE, kind)
    return predictor


def _check_probe(predictor: Predictor, path: Path, kind: str) -> None:
    """The runtime must reproduce, on this machine, what it answered on the probe images at export time."""
    key = _entry(predictor.export, kind)["probe"]
    try:
        with np.load(path, allow_pickle=False) as probe:
            images, want = probe["images"], probe[key]
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeUnavailable(f"no readable {PROBE} in the exported runtime") from exc
    got = predictor.outputs(images)
    if got.shape != want.shape or not _probe_agrees(got, want):
        raise RuntimeUnavailable(f"the {predictor.runtime_name} runtime disagrees with its export probe here")


def _probe_agrees(got: np.ndarray, want: np.ndarray) -> bool:
    """Probabilities within :data:`PROBE_ATOL`; the unfamiliarity score (unbounded, in standard units, from sums of
    ~200 products whose order another CPU's kernels may change) within that relative to its size."""
    if not len(want):
        return True
    probs = float(np.max(np.abs(got[:, :NUM_PROBS] - want[:, :NUM_PROBS])))
    score = np.abs(got[:, NUM_PROBS:] - want[:, NUM_PROBS:]) <= PROBE_ATOL * (10.0 + np.abs(want[:, NUM_PROBS:]))
    return probs <= PROBE_ATOL and bool(np.all(score))
