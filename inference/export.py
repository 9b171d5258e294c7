"""Export a served Keras model to a fast runtime, check its parity, and log both with the model's MLflow run.

Usage: python -m inference.export MODEL_URI [--tracking-uri URI] [--storage-uri URI]
                                  [--candidates litert-int8,onnx] [-v]
       (also: ric export ...)

e.g. ``python -m inference.export models:/refund-item-classifier@champion`` adds the runtime artifact to a version
registered before exports existed (or re-exports it). Training calls :func:`export_and_log` for every new version.

Every candidate is tried: LiteRT with dynamic-range int8 weights, ONNX Runtime in float32 and LiteRT in float32.
Each whose predictions on the validation and test splits agree with the Keras model's (top class on at least
``MIN_AGREEMENT`` of the images, finite probabilities; for a model that computes the unfamiliarity score, its 11th
output column, the items called unfamiliar at the version's threshold agree on at least ``MIN_AGREEMENT`` of them
too and the scores are within ``MAX_SCORE_P99_DIFF`` standard units on 99 % of them, over every parity image:
training adds the validation photos and the unfamiliar test photos, where the score matters) is written to the run's
``runtime/`` folder, listed in ``runtime.json`` (``runtimes``: kind, file, parity report of each) with its answers
on a few probe images in ``probe.npz`` (re-checked whenever it is loaded). Which of them serves is decided where it
runs, by timing them and the Keras graph on that CPU at that path's batch size (:mod:`inference.choice`); ``kind``
names the first that passed (fastest on the development machine, the preference of a loader told ``exported``). When
none passes, ``runtime.json`` says so and why, and the version serves through the Keras graph. The parity report is
logged as metrics of the same run (``runtime_argmax_agreement``, ``runtime_max_prob_diff``,
``runtime_val_accuracy``, ``keras_val_accuracy``, ... of the preferred one, and ``parity_<kind>_*`` for every
candidate) and the runtimes as the run and model-version tags ``runtime`` (the preferred) and ``runtimes`` (all that
passed).

Exit codes: 0 exported (a candidate passed parity); 1 no candidate passed (the version keeps serving through the
Keras graph); 2 usage or settings; 3 the model or the processed splits are unavailable (one line: what to check, when
the tracking server or the store cannot be reached).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command_parser, explain, fail, from_env, help_settings, read_settings
from common.logging import setup_logging
from common.settings import Settings
from inference.runtimes import LiteRTRuntime, OnnxRuntime, Runtime

log = logging.getLogger("inference.export")

ARTIFACT_DIR = "runtime"
MANIFEST = "runtime.json"
PROBE = "probe.npz"
MIN_AGREEMENT = 0.995  # top-class agreement with the Keras model over validation + test
PROBE_ATOL = 1e-3  # a loaded runtime must reproduce its export-time answers on the probe images this closely
CANDIDATES = ("litert-int8", "onnx", "litert")
FILES = {"litert-int8": "model-int8.tflite", "litert": "model.tflite", "onnx": "model.onnx"}
EXIT_OK, EXIT_NO_PARITY, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
PROG = "ric export"
NUM_PROBS = 10  # the probabilities' columns of a served model's output; an 11th is the unfamiliarity score

# name -> (28x28 uint8 images, labels, or None for images of no class: the unfamiliar photos)
Splits = Mapping[str, tuple[np.ndarray, np.ndarray | None]]
SCORE_SHARE = 0.05  # without a threshold, the score's parity is checked at the one flagging this share (Keras)
# The unfamiliarity score is in standard units of in-distribution validation images: a runtime whose score is further
# than this from the Keras model's on 1 % of the parity images computes another score, even where its flags at the
# version's threshold agree (a tiny model's int8 quantized quadratic form: hundreds of units off, a threshold far out)
MAX_SCORE_P99_DIFF = 1.0


# --- conversion and loading ---------------------------------------------------------------------------------


def convert(model: Any, kind: str) -> bytes:
    """The Keras ``model`` as a ``kind`` flatbuffer / protobuf."""
    import tensorflow as tf

    if kind in ("litert", "litert-int8"):
        # from_keras_model, not from_concrete_functions: the latter gave 10 % accuracy on this model family.
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind == "litert-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic-range int8
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the saved signature of every variable
            return bytes(converter.convert())
    if kind == "onnx":
        import tf2onnx

        # from_keras does not understand Keras 3 models; from_function does, given a function whose signature it
        # may fix itself (a tf.function with its own input_signature fails).
        spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="image"),)
        fn = tf.function(lambda image: model(image, training=False))
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
        return proto.SerializeToString()
    raise ValueError(f"unknown runtime {kind!r}; choose from {', '.join(CANDIDATES)}")


def load_runtime(kind: str, data: bytes, *, threads: int = 1) -> Runtime:
    if kind in ("litert", "litert-int8"):
        return LiteRTRuntime(data, threads=threads, name=kind)
    if kind == "onnx":
        return OnnxRuntime(data, threads=threads)
    raise ValueError(f"unknown runtime {kind!r}")


# --- parity (pure) ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parity:
    """How a runtime's answers compare with the Keras model's on the same images."""

    kind: str
    passed: bool
    reason: str
    argmax_agreement: float = float("nan")
    max_prob_diff: float = float("nan")
    accuracy: dict[str, float] = field(default_factory=dict)  # split -> runtime accuracy
    keras_accuracy: dict[str, float] = field(default_factory=dict)
    images: int = 0
    convert_seconds: float = 0.0
    # The unfamiliarity score (NaN: the model does not compute it): how often the runtime and Keras call the same
    # items unfamiliar, and how far apart the scores are (largest, 99th percentile)
    unfamiliar_agreement: float = float("nan")
    unfamiliarity_max_diff: float = float("nan")
    unfamiliarity_p99_diff: float = float("nan")

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {
            f"{prefix}parity_passed": float(self.passed),
            f"{prefix}argmax_agreement": self.argmax_agreement,
            f"{prefix}max_prob_diff": self.max_prob_diff,
            f"{prefix}unfamiliar_agreement": self.unfamiliar_agreement,
            f"{prefix}unfamiliarity_max_diff": self.unfamiliarity_max_diff,
            f"{prefix}unfamiliarity_p99_diff": self.unfamiliarity_p99_diff,
        }
        out.update({f"{prefix}{split}_accuracy": acc for split, acc in self.accuracy.items()})
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def check_parity(
    kind: str,
    keras_out: Mapping[str, np.ndarray],
    runtime_out: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray | None],
    *,
    min_agreement: float = MIN_AGREEMENT,
    unfamiliar_threshold: float | None = None,
) -> Parity:
    """Compare over every split (outputs (N, 10) or (N, 11): probabilities, then the unfamiliarity score); passes
    when the top classes agree on ``min_agreement`` of all images, every output is finite and, with a score, the
    items above ``unfamiliar_threshold`` (default: the Keras scores' top :data:`SCORE_SHARE`) agree on
    ``min_agreement`` of them and the scores are within :data:`MAX_SCORE_P99_DIFF` on 99 % of them. Accuracy is
    reported for the splits with labels."""
    ref = np.concatenate([keras_out[s] for s in labels])
    got = np.concatenate([runtime_out[s] for s in labels])
    if got.shape != ref.shape:
        return Parity(kind, False, f"output shape {got.shape} differs from the Keras model's {ref.shape}")
    finite = bool(np.all(np.isfinite(got)))
    probs, ref_probs = got[:, :NUM_PROBS], ref[:, :NUM_PROBS]
    agreement = float(np.mean(probs.argmax(axis=1) == ref_probs.argmax(axis=1))) if len(ref) else float("nan")
    diff = float(np.max(np.abs(probs - ref_probs))) if len(ref) and finite else float("inf")
    known = {s: y for s, y in labels.items() if y is not None}
    accuracy = {s: float(np.mean(runtime_out[s][:, :NUM_PROBS].argmax(axis=1) == y)) for s, y in known.items()}
    keras_accuracy = {s: float(np.mean(keras_out[s][:, :NUM_PROBS].argmax(axis=1) == y)) for s, y in known.items()}
    score = _score_parity(ref, got, unfamiliar_threshold) if ref.shape[1] > NUM_PROBS and finite else {}
    if not finite:
        passed, reason = False, "non-finite outputs"
    elif not agreement >= min_agreement:
        passed, reason = False, f"top class agrees on {agreement:.2%} of images (< {min_agreement:.1%})"
    elif score and not score["unfamiliar_agreement"] >= min_agreement:
        passed = False
        reason = f"the items called unfamiliar agree on {score['unfamiliar_agreement']:.2%} (< {min_agreement:.1%})"
    elif score and not score["unfamiliarity_p99_diff"] <= MAX_SCORE_P99_DIFF:
        passed = False
        reason = (f"the unfamiliarity score is {score['unfamiliarity_p99_diff']:.3g} standard units off at the 99th "
                  f"percentile (> {MAX_SCORE_P99_DIFF})")  # fmt: skip
    else:
        passed, reason = True, f"top class agrees on {agreement:.2%} of images (>= {min_agreement:.1%})"
        if score:
            reason += f"; unfamiliar on {score['unfamiliar_agreement']:.2%}"
    return Parity(kind, passed, reason, agreement, diff, accuracy, keras_accuracy, len(ref), **score)


def _score_parity(ref: np.ndarray, got: np.ndarray, threshold: float | None) -> dict[str, float]:
    want, have = ref[:, NUM_PROBS], got[:, NUM_PROBS]
    if threshold is None:
        threshold = float(np.quantile(want, 1.0 - SCORE_SHARE)) if len(want) else 0.0
    gap = np.abs(have - want)
    return {
        "unfamiliar_agreement": float(np.mean((have > threshold) == (want > threshold))) if len(want) else 1.0,
        "unfamiliarity_max_diff": float(gap.max(initial=0.0)),
        "unfamiliarity_p99_diff": float(np.quantile(gap, 0.99)) if len(gap) else 0.0,
    }


# --- export -------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    chosen: Parity | None  # the preferred runtime; None: no candidate passed, the version serves through Keras
    tried: list[Parity]
    directory: Path
    manifest: dict[str, Any]

    @property
    def runtime(self) -> str:
        return self.chosen.kind if self.chosen else "keras-graph"

    @property
    def passed(self) -> list[str]:
        """Every runtime that passed parity, in preference order."""
        return [p.kind for p in self.tried if p.passed]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.tried:
            out.update(p.metrics(f"parity_{p.kind.replace('-', '_')}_"))
        ref = self.chosen or (self.tried[0] if self.tried else None)
        if ref is not None:
            out.update({f"keras_{s}_accuracy": a for s, a in ref.keras_accuracy.items()})
        if self.chosen is not None:
            out.update(self.chosen.metrics("runtime_"))
        else:
            out["runtime_parity_passed"] = 0.0
        return out


def _outputs(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    from data_processing.preprocessing import to_model_batch

    parts = [run(to_model_batch(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, NUM_PROBS), np.float32)


def export_runtime(
    model: Any,
    splits: Splits,
    directory: Path,
    *,
    candidates: Sequence[str] = CANDIDATES,
    keras_outputs: Mapping[str, np.ndarray] | None = None,
    probe_size: int = 16,
    min_agreement: float = MIN_AGREEMENT,
    unfamiliar_threshold: float | None = None,
) -> ExportResult:
    """Try every one of ``candidates`` on ``splits``; write each that passes parity (and a manifest listing them, or
    saying none did) into ``directory``. ``keras_outputs`` (per split) saves recomputing the Keras model's answers;
    ``unfamiliar_threshold``: the version's, where the score's parity is checked."""
    from inference.runtimes import KerasGraphRuntime
    from inference.tta import tta_of

    directory.mkdir(parents=True, exist_ok=True)
    splits = {s: (x, y) for s, (x, y) in splits.items() if len(x)}  # an empty one has no outputs to compare
    labels = {s: None if y is None else np.asarray(y) for s, (_, y) in splits.items()}
    if keras_outputs is None:
        graph = KerasGraphRuntime(model)
        keras_outputs = {s: _outputs(graph.run, x) for s, (x, _) in splits.items()}
    tried: list[Parity] = []
    passed: list[tuple[Parity, bytes, Runtime]] = []
    for kind in candidates:
        t0 = time.perf_counter()
        try:
            data = convert(model, kind)
            runtime = load_runtime(kind, data)
        except Exception as exc:  # a converter that cannot handle a layer: try the next candidate
            log.warning("export to %s failed: %s: %s", kind, type(exc).__name__, exc)
            tried.append(Parity(kind, False, f"conversion failed: {type(exc).__name__}"))
            continue
        seconds = time.perf_counter() - t0
        runtime_out = {s: _outputs(runtime.run, x) for s, (x, _) in splits.items()}
        parity = check_parity(kind, keras_outputs, runtime_out, labels, min_agreement=min_agreement,
                              unfamiliar_threshold=unfamiliar_threshold)  # fmt: skip
        parity = Parity(**{**asdict(parity), "convert_seconds": round(seconds, 2)})
        tried.append(parity)
        log.info("runtime %s: %s; max probability difference %.2g", kind, parity.reason, parity.max_prob_diff)
        if parity.passed:
            passed.append((parity, data, runtime))
    chosen = passed[0][0] if passed else None
    manifest: dict[str, Any] = {
        "kind": chosen.kind if chosen else "keras-graph",
        "file": FILES[chosen.kind] if chosen else None,
        "passed": chosen is not None,
        "reason": chosen.reason if chosen else "; ".join(f"{p.kind}: {p.reason}" for p in tried) or "none tried",
        "views": len(tta_of(model)[1]),
        "min_agreement": min_agreement,
        # The served model's 11th output column: how unfamiliar an item is (inference.unfamiliarity)
        "unfamiliarity": _has_score(keras_outputs),
        "unfamiliar_threshold": unfamiliar_threshold,
        "parity": asdict(chosen) if chosen else None,
        "runtimes": [{"kind": p.kind, "file": FILES[p.kind], "probe": f"probs_{p.kind}"} for p, _, _ in passed],
        "tried": [asdict(p) for p in tried],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
    }
    if passed:
        first = next(iter(splits.values()))[0][:probe_size]
        answers = {}
        for parity, data, runtime in passed:
            (directory / FILES[parity.kind]).write_bytes(data)
            answers[f"probs_{parity.kind}"] = _outputs(runtime.run, first)
        np.savez(directory / PROBE, images=first, probs=answers[f"probs_{chosen.kind}"], **answers)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
    return ExportResult(chosen, tried, directory, manifest)


def _has_score(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(np.asarray(o).ndim == 2 and np.asarray(o).shape[1] > NUM_PROBS for o in outputs.values())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "ai-edge-litert", "onnxruntime", "tf2onnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def log_export(
    result: ExportResult, run_id: str, tracking_uri: str | None, *, model: tuple[str, str] | None = None
) -> None:
    """Log ``result`` into MLflow run ``run_id``: the ``runtime/`` artifacts, the parity metrics, the ``runtime``
    tag; with ``model`` = (name, version), the registered version's ``runtime`` tag too."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ts = int(time.time() * 1000)
    metrics = [Metric(k, v, ts, 0) for k, v in result.metrics().items()]
    runtimes = ",".join(result.passed) or "keras-graph"
    client.log_batch(run_id, metrics=metrics, tags=[RunTag("runtime", result.runtime), RunTag("runtimes", runtimes)])
    client.log_artifacts(run_id, str(result.directory), artifact_path=ARTIFACT_DIR)
    if model is not None:
        client.set_model_version_tag(model[0], model[1], "runtime", result.runtime)
        client.set_model_version_tag(model[0], model[1], "runtimes", runtimes)


def export_and_log(
    model: Any,
    splits: Splits,
    run_id: str,
    tracking_uri: str | None,
    *,
    keras_outputs: Mapping[str, np.ndarray] | None = None,
    candidates: Sequence[str] = CANDIDATES,
    registered: tuple[str, str] | None = None,
    unfamiliar_threshold: float | None = None,
) -> ExportResult:
    """:func:`export_runtime` into a temporary folder, then :func:`log_export`."""
    with tempfile.TemporaryDirectory(prefix="ric-export-") as tmp:
        result = export_runtime(model, splits, Path(tmp), candidates=candidates, keras_outputs=keras_outputs,
                                unfamiliar_threshold=unfamiliar_threshold)  # fmt: skip
        log_export(result, run_id, tracking_uri, model=registered)
    return result


# --- CLI ----------------------------------------------------------------------------------------------------


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("export", __doc__)
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--tracking-uri",
                   help=f"MLflow tracking/registry store (default {from_env(env, 'mlflow_tracking_uri')})")  # fmt: skip
    p.add_argument("--storage-uri",
                   help=f"store holding processed/ (default {from_env(env, 'storage_uri')})")  # fmt: skip
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="runtimes to try, the preferred first")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (env := read_settings(PROG)) is None:
        return EXIT_USAGE
    setup_logging(args.verbose, env.log_level)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in candidates if c not in FILES]
    if unknown or not candidates:
        log.error("unknown runtime(s) %s; choose from %s", unknown, ", ".join(CANDIDATES))
        return EXIT_USAGE
    settings = env.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)
    try:
        import mlflow.keras

        from common.storage import storage_from_settings
        from data_processing.dataset import load_split
        from inference.versions import resolve_model

        info = resolve_model(args.model_uri, settings.mlflow_tracking_uri)
        if not info.run_id:
            log.error("%s is not a registered version with a run", args.model_uri)
            return EXIT_USAGE
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        model = mlflow.keras.load_model(info.pinned_uri)
        storage = storage_from_settings(settings)
        splits = {name: load_split(storage, name) for name in ("val", "test")}
    except Exception as exc:
        fail(PROG, f"cannot load {args.model_uri} or its data: {explain(exc, settings)}")
        return EXIT_UNAVAILABLE
    result = export_and_log(
        model,
        {name: (s.images, s.labels) for name, s in splits.items()},
        info.run_id,
        settings.mlflow_tracking_uri,
        candidates=candidates,
        registered=(info.name, info.version),
        unfamiliar_threshold=info.unfamiliar_threshold,
    )
    print(
        f"{info.name} v{info.version}: runtime {result.runtime} "
        f"({result.manifest['reason']}); logged to run {info.run_id}",
        flush=True,
    )
    return EXIT_OK if result.chosen is not None else EXIT_NO_PARITY


if __name__ == "__main__":
    raise SystemExit(main())
