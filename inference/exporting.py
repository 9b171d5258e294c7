"""Exporting a served Keras model to the fast runtimes: conversion, parity with the Keras model, the ``runtime/``
folder (files, ``runtime.json``, probe answers) and its logging with the model's MLflow run (the library of
``python -m inference.export``; training calls :func:`export_and_log` for every new version).

Every candidate is tried: LiteRT with dynamic-range int8 weights, ONNX Runtime in float32 and LiteRT in float32.
Each whose predictions on the validation and test splits agree with the Keras model's (top class on at least
``MIN_AGREEMENT`` of the images, finite probabilities; for a model that computes the unfamiliarity score, its 11th
output column, the items called unfamiliar at the version's threshold agree on at least ``MIN_AGREEMENT`` of them
too and the scores are within ``MAX_SCORE_P99_DIFF`` standard units on 99 % of them) is written to the run's
``runtime/`` folder, listed in ``runtime.json`` with its answers on a few probe images in ``probe.npz`` (re-checked
whenever it is loaded). Which of them serves is decided where it runs (:mod:`inference.choice`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.runtimes import LiteRTRuntime, OnnxRuntime, Runtime

if TYPE_CHECKING:
    import keras

log = logging.getLogger("inference.export")  # the command's name in its log lines, as before the split

ARTIFACT_DIR = "runtime"
MANIFEST = "runtime.json"
PROBE = "probe.npz"
MIN_AGREEMENT = 0.995  # top-class agreement with the Keras model over validation + test
PROBE_ATOL = 1e-3  # a loaded runtime must reproduce its export-time answers on the probe images this closely
CANDIDATES = ("litert-int8", "onnx", "litert")
FILES = {"litert-int8": "model-int8.tflite", "litert": "model.tflite", "onnx": "model.onnx"}
NUM_PROBS = 10  # the probabilities' columns of a served model's output; an 11th is the unfamiliarity score

# name -> (28x28 uint8 images, labels, or None for images of no class: the unfamiliar photos)
Splits = Mapping[str, tuple[np.ndarray, np.ndarray | None]]
SCORE_SHARE = 0.05  # without a threshold, the score's parity is checked at the one flagging this share (Keras)
# The unfamiliarity score is in standard units of in-distribution validation images: a runtime whose score is further
# than this from the Keras model's on 1 % of the parity images computes another score, even where its flags at the
# version's threshold agree (a tiny model's int8 quantized quadratic form: hundreds of units off, a threshold far out)
MAX_SCORE_P99_DIFF = 1.0


# --- conversion and loading ---------------------------------------------------------------------------------


def convert(model: keras.Model, kind: str) -> bytes:
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
        reason = (
            f"the unfamiliarity score is {score['unfamiliarity_p99_diff']:.3g} standard units off at the 99th "
            f"percentile (> {MAX_SCORE_P99_DIFF})"
        )
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


@dataclass(frozen=True)
class ExportPlan:
    """What an export tries and how strictly: the ``candidates`` (the preferred first), the top-class agreement
    each must reach, the version's unfamiliar threshold (where the score's parity is checked; None: the Keras
    scores' top :data:`SCORE_SHARE`) and how many probe images keep each runtime's answers."""

    candidates: Sequence[str] = CANDIDATES
    min_agreement: float = MIN_AGREEMENT
    unfamiliar_threshold: float | None = None
    probe_size: int = 16


@dataclass(frozen=True)
class _Passed:
    parity: Parity
    data: bytes
    runtime: Runtime


def export_runtime(
    model: keras.Model,
    splits: Splits,
    directory: Path,
    *,
    plan: ExportPlan = ExportPlan(),
    keras_outputs: Mapping[str, np.ndarray] | None = None,
) -> ExportResult:
    """Try every one of ``plan.candidates`` on ``splits``; write each that passes parity (and a manifest listing
    them, or saying none did) into ``directory``. ``keras_outputs`` (per split) saves recomputing the Keras model's
    answers."""
    from inference.runtimes import KerasGraphRuntime

    directory.mkdir(parents=True, exist_ok=True)
    splits = {s: (x, y) for s, (x, y) in splits.items() if len(x)}  # an empty one has no outputs to compare
    if keras_outputs is None:
        graph = KerasGraphRuntime(model)
        keras_outputs = {s: _outputs(graph.run, x) for s, (x, _) in splits.items()}
    tried: list[Parity] = []
    passed: list[_Passed] = []
    for kind in plan.candidates:
        parity, candidate = _try_candidate(model, kind, splits, keras_outputs, plan)
        tried.append(parity)
        if candidate is not None:
            passed.append(candidate)
    chosen = passed[0].parity if passed else None
    manifest = _manifest(model, chosen, tried, passed, keras_outputs, plan)
    if passed:
        first = next(iter(splits.values()))[0][: plan.probe_size]
        answers = {}
        for p in passed:
            (directory / FILES[p.parity.kind]).write_bytes(p.data)
            answers[f"probs_{p.parity.kind}"] = _outputs(p.runtime.run, first)
        np.savez(directory / PROBE, images=first, probs=answers[f"probs_{passed[0].parity.kind}"], **answers)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
    return ExportResult(chosen, tried, directory, manifest)


def _try_candidate(
    model: keras.Model, kind: str, splits: Splits, keras_outputs: Mapping[str, np.ndarray], plan: ExportPlan
) -> tuple[Parity, _Passed | None]:
    """Convert ``model`` to ``kind`` and check its parity on ``splits``; the runtime too when it passed."""
    t0 = time.perf_counter()
    try:
        data = convert(model, kind)
        runtime = load_runtime(kind, data)
    except Exception as exc:  # a converter that cannot handle a layer: try the next candidate
        log.warning("export to %s failed: %s: %s", kind, type(exc).__name__, exc)
        return Parity(kind, False, f"conversion failed: {type(exc).__name__}"), None
    seconds = time.perf_counter() - t0
    labels = {s: None if y is None else np.asarray(y) for s, (_, y) in splits.items()}
    runtime_out = {s: _outputs(runtime.run, x) for s, (x, _) in splits.items()}
    parity = check_parity(
        kind,
        keras_outputs,
        runtime_out,
        labels,
        min_agreement=plan.min_agreement,
        unfamiliar_threshold=plan.unfamiliar_threshold,
    )
    parity = Parity(**{**asdict(parity), "convert_seconds": round(seconds, 2)})
    log.info("runtime %s: %s; max probability difference %.2g", kind, parity.reason, parity.max_prob_diff)
    return parity, _Passed(parity, data, runtime) if parity.passed else None


def _manifest(
    model: keras.Model,
    chosen: Parity | None,
    tried: list[Parity],
    passed: list[_Passed],
    keras_outputs: Mapping[str, np.ndarray],
    plan: ExportPlan,
) -> dict[str, Any]:
    """``runtime.json``: the preferred runtime, every one that passed, every one tried and why."""
    from inference.tta import tta_of

    return {
        "kind": chosen.kind if chosen else "keras-graph",
        "file": FILES[chosen.kind] if chosen else None,
        "passed": chosen is not None,
        "reason": chosen.reason if chosen else "; ".join(f"{p.kind}: {p.reason}" for p in tried) or "none tried",
        "views": len(tta_of(model)[1]),
        "min_agreement": plan.min_agreement,
        # The served model's 11th output column: how unfamiliar an item is (inference.unfamiliarity)
        "unfamiliarity": _has_score(keras_outputs),
        "unfamiliar_threshold": plan.unfamiliar_threshold,
        "parity": asdict(chosen) if chosen else None,
        "runtimes": [
            {"kind": p.parity.kind, "file": FILES[p.parity.kind], "probe": f"probs_{p.parity.kind}"} for p in passed
        ],
        "tried": [asdict(p) for p in tried],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
    }


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
    model: keras.Model,
    splits: Splits,
    run_id: str,
    tracking_uri: str | None,
    *,
    plan: ExportPlan = ExportPlan(),
    keras_outputs: Mapping[str, np.ndarray] | None = None,
    registered: tuple[str, str] | None = None,
) -> ExportResult:
    """:func:`export_runtime` into a temporary folder, then :func:`log_export` (``registered``: the version's
    (name, version), whose tags say the runtimes too)."""
    with tempfile.TemporaryDirectory(prefix="ric-export-") as tmp:
        result = export_runtime(model, splits, Path(tmp), plan=plan, keras_outputs=keras_outputs)
        log_export(result, run_id, tracking_uri, model=registered)
    return result
