"""The evaluation of a trained network: calibrate it on validation data, evaluate the served model ONCE on the
test split and the test photos, and log metrics, reports and plots to the active MLflow run."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

from common.labels import CLASS_NAMES
from data_processing.photos import draw_params
from inference.predictor import Predictor, Scores
from inference.runtimes import KerasGraphRuntime
from inference.tta import with_tta
from inference.versions import ModelInfo
from model_training import evaluation as ev
from model_training.config import TrainConfig
from model_training.evaluation import ClassificationMetrics
from model_training.fit import FitResult
from model_training.network import count_flops, to_plain_model
from model_training.photo_bench import (
    UNFAMILIAR_TEST,
    PhotoSet,
    accuracy_by_kind,
    benchmark_id,
    failure_photos,
    photo_seed,
    real_kinds,
)

if TYPE_CHECKING:
    import keras

    from data_processing.dataset import Split
    from model_training.unfamiliar_bench import HeadImages, UnfamiliarSet

log = logging.getLogger(__name__)

CONFIDENT_ERROR_TARGET = 0.02  # issue 13: at most 2 % of photo answers wrong with a confidence above the threshold
# Standard errors (of a share measured on the validation photos) the threshold aims below the target: one-sided 95 %.
# One standard error (84 %) was not enough: the validation split is easier than the test split (clean validation
# accuracy exceeds clean test accuracy by 0.5-0.7 points in every run), and six runs aimed so landed at 1.50-2.20 %
# on the test photos, three of them above 2 % (docs/training.md, "Where a person looks").
REVIEW_MARGIN_Z = 1.645


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (no label smoothing: the honest test loss)."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's probabilities for 28x28 uint8 images, through the inference path that serves it."""
    return predict_scores(model, images, batch_size).probs


def predict_scores(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> Scores:
    """The model's probabilities and unfamiliarity (NaN: a model without it) for 28x28 uint8 images, through the
    inference path that serves it."""
    return Scores.of(predict_outputs(model, images, batch_size))


def predict_outputs(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's raw outputs ((N, 10), or (N, 11) with the unfamiliarity score) through the serving path."""
    info = ModelInfo(name="in-training", version="unregistered", alias=None, run_id=None, uri="memory://")
    return Predictor(info, KerasGraphRuntime(model), max_batch=batch_size).outputs(images)


@dataclass(frozen=True)
class EvaluationData:
    """What a trained network is evaluated on: the splits, the photo benchmark's sets, its real-surface slice and
    the unfamiliar test photos (None: not rendered)."""

    train: Split
    val: Split
    test: Split
    photo_val: PhotoSet
    photo_test: PhotoSet
    real_val: PhotoSet | None = None
    real_test: PhotoSet | None = None
    unfamiliar_test: UnfamiliarSet | None = None
    head: HeadImages | None = None  # the outlier-exposure head's images (None: the served score is the combined one)

    def labelled(self) -> dict[str, Split | PhotoSet]:
        """The four labelled sets the served model is evaluated on, by name."""
        return {"val": self.val, "photo_val": self.photo_val, "test": self.test, "photo_test": self.photo_test}

    def in_distribution_photos(self, split: str) -> list[PhotoSet]:
        """The photo sets of items of ``split`` ("val" or "test"): the benchmark's and the real-surface slice's."""
        sets = (self.photo_val, self.real_val) if split == "val" else (self.photo_test, self.real_test)
        return [s for s in sets if s is not None and len(s)]


@dataclass
class EvaluationReport:
    served: keras.Model  # the calibrated model that is logged, registered and served
    temperature: float
    val_probs: np.ndarray  # the served model's answers on the validation split (for the drift reference)
    test_probs: np.ndarray  # ... and on the test split
    test: ClassificationMetrics  # the served model's on the test split
    photo_test: ClassificationMetrics  # ... and on the photo benchmark's test photos
    metrics: dict[str, float]
    # The unfamiliarity score above which an item is called unfamiliar (None: the model has no score)
    unfamiliar_threshold: float | None = None
    # Name -> (images, labels or None, the served Keras model's raw outputs): what the exported runtimes' parity is
    # checked on (the clean validation and test splits, the validation photos, the unfamiliar test photos)
    parity: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = field(default_factory=dict)


def served_model(
    network: keras.Model, cfg: TrainConfig, data: EvaluationData, raw_val: np.ndarray
) -> tuple[keras.Model, float]:
    """The model to serve and its temperature: ``network`` calibrated on the clean validation split and the
    validation photos together (what the model will see in service is photos), computing its unfamiliarity score
    (statistics of the training split, standardised on the in-distribution validation images), with the run's
    test-time views."""
    from inference.unfamiliarity import with_unfamiliarity
    from model_training.unfamiliar_bench import fit_unfamiliarity

    raw_photo_val = predict_probs(network, data.photo_val.images)
    temperature = ev.fit_temperature(
        np.concatenate([raw_val, raw_photo_val]), np.concatenate([data.val.labels, data.photo_val.labels])
    )
    calibrated = to_plain_model(network, cfg.arch, temperature=temperature)
    references = [data.val.images, *(s.images for s in data.in_distribution_photos("val"))]
    stats = fit_unfamiliarity(calibrated, data.train, references)
    if cfg.unfamiliar_score == "oe" and data.head is not None:
        stats = stats.with_head(fit_outlier_head(calibrated, stats, data.head, cfg.unfamiliar_share))
    scored = with_unfamiliarity(calibrated, stats)
    return with_tta(scored, cfg.tta), temperature


def fit_outlier_head(network: keras.Model, stats: Any, images: HeadImages, share: float) -> Any:
    """The outlier-exposure head (:mod:`model_training.unfamiliar_bench`), its penalty chosen on the validation
    photos against the unfamiliar validation photos; logs the choice (``unfamiliar_head_*``)."""
    from model_training.unfamiliar_bench import fit_head, head_data

    rows = head_data(network, stats, images)
    choice = fit_head(rows, stats.fit.whiten.shape[0], share)
    mlflow.log_params({"unfamiliar_head_l2": choice.head.l2, "unfamiliar_head_fit_in": len(rows.fit_in),
                       "unfamiliar_head_fit_out": len(rows.fit_out)})  # fmt: skip
    caught, area = choice.tried[choice.head.l2]
    mlflow.log_metrics({"unfamiliar_head_val_caught": caught, "unfamiliar_head_val_auroc": area})
    log.info("unfamiliarity head: L2 %g chosen on %d + %d validation photos (catches %.1f %% of the unfamiliar ones "
             "at %.0f %% flagged)", choice.head.l2, len(rows.val_in), len(rows.val_out), 100 * caught,
             100 * share)  # fmt: skip
    return choice.head


@dataclass(frozen=True)
class Answers:
    """One labelled set's probabilities: the served model's, and the bare network's on the plain image (``raw``:
    uncalibrated, one view)."""

    raw: np.ndarray
    served: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Scored:
    """The served model's answers on the four labelled sets (``val``, ``photo_val``, ``test``, ``photo_test``) and
    its scores on the test split, the test photos and the validation photos."""

    answers: dict[str, Answers]
    test: ClassificationMetrics
    photo_test: ClassificationMetrics
    photo_val: ClassificationMetrics
    temperature: float

    @classmethod
    def of(cls, answers: dict[str, Answers], temperature: float) -> Scored:
        def score(name: str) -> ClassificationMetrics:
            return ev.classification_metrics(answers[name].labels, answers[name].served.argmax(axis=1))

        return cls(answers, score("test"), score("photo_test"), score("photo_val"), temperature)


def evaluate_and_log(
    result: FitResult, cfg: TrainConfig, data: EvaluationData, *, review_threshold: float
) -> EvaluationReport:
    """Build the served model (:func:`served_model`), evaluate it ONCE on the test split and the test photos, choose
    its review threshold and its unfamiliar threshold and score the unfamiliar test photos
    (:func:`log_unfamiliarity`), and log metrics and artifacts to the active MLflow run. The test split and test
    photos only report."""
    network = result.model
    raw_val = predict_probs(network, data.val.images)
    model, temperature = served_model(network, cfg, data, raw_val)  # what is evaluated, logged, registered, served
    mlflow.log_params({"model_params": model.count_params(), "flops_per_image": count_flops(model)})
    # The test split and the test photos are touched once, here: the served model, and (reported only, never
    # used to choose) the uncalibrated network on the plain image alone.
    outs = {name: predict_outputs(model, s.images) for name, s in data.labelled().items()}
    answers = _answers(network, outs, data, temperature, raw_val=raw_val, single_view=cfg.tta == "none")
    scored = Scored.of(answers, temperature)
    metrics = _headline_metrics(result, scored, data.photo_test.failed)
    metrics.update(_calibration_metrics(answers, review_threshold))
    threshold, at_target = _review_threshold_metrics(answers)
    metrics.update(at_target)
    unfamiliar_threshold, unfamiliar = log_unfamiliarity(model, cfg, data, outs)
    metrics.update(unfamiliar)
    if unfamiliar_threshold is not None:  # what a person sees with both reasons to look: what is left unreviewed
        rules = (threshold, unfamiliar_threshold)
        photo_test = outs["photo_test"]
        metrics["photo_test_unreviewed_error_share"] = unreviewed_error_share(
            photo_test, data.photo_test.labels, *rules
        )
        metrics["photo_test_review_share_with_unfamiliar"] = review_share(photo_test, *rules)
    mlflow.log_metrics(metrics)
    _log_summary(cfg, scored, metrics, threshold)
    probs = (answers["test"].served, answers["photo_test"].served)
    _log_reports(result, data, scored, probs, review_threshold)
    parity = {name: (x, y, outs[name]) for name, (x, y) in _parity_sets(data).items() if name in outs}
    val_probs, test_probs = answers["val"].served, answers["test"].served
    return EvaluationReport(
        model, temperature, val_probs, test_probs, scored.test, scored.photo_test, metrics, unfamiliar_threshold, parity
    )


def _answers(
    network: keras.Model,
    outs: dict[str, np.ndarray],
    data: EvaluationData,
    temperature: float,
    *,
    raw_val: np.ndarray,
    single_view: bool,
) -> dict[str, Answers]:
    """Served and raw probabilities per labelled set. With a single view the network's own answers are the served
    ones with the temperature undone; with test-time views the network is asked again on the plain image."""
    answers = {}
    for name, split in data.labelled().items():
        served = Scores.of(outs[name]).probs
        if name == "val":
            raw = raw_val
        elif single_view:
            raw = ev.with_temperature(served, 1 / temperature)
        else:
            raw = predict_probs(network, split.images)
        answers[name] = Answers(raw, served, split.labels)
    return answers


def _headline_metrics(result: FitResult, scored: Scored, photo_failed: int) -> dict[str, float]:
    """Accuracy, macro F1, per class and loss on the test split and the test photos; the fit's numbers."""
    test, photo_test, val = scored.answers["test"], scored.answers["photo_test"], scored.answers["val"]
    gaps = scored.test.recall - scored.photo_test.recall  # per class: clean accuracy minus photo accuracy
    return {
        **scored.test.as_metrics("test_"),
        **scored.photo_test.as_metrics("photo_test_"),
        "test_loss": cross_entropy(test.served, test.labels),
        "test_accuracy_single_view": float(np.mean(test.raw.argmax(axis=1) == test.labels)),
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "val_accuracy_served": float(np.mean(val.served.argmax(axis=1) == val.labels)),
        "photo_val_accuracy": scored.photo_val.accuracy,
        "photo_val_macro_f1": scored.photo_val.macro_f1,
        "photo_test_loss": cross_entropy(photo_test.served, photo_test.labels),
        "photo_test_worst_class_gap": float(gaps.max()),
        "photo_test_failed": float(photo_failed),
        "temperature": scored.temperature,
        "training_seconds": result.seconds,
        "epochs_run": result.epochs_run,
    }


def _calibration_metrics(answers: dict[str, Answers], review_threshold: float) -> dict[str, float]:
    """Per labelled set, before (the raw network) and after (served): the calibration error, the share of answers
    wrong and confident above ``review_threshold``, and the share a person reviews."""
    metrics = {}
    for name, a in answers.items():
        metrics[f"{name}_ece_before"] = ev.expected_calibration_error(a.raw, a.labels)
        metrics[f"{name}_ece"] = ev.expected_calibration_error(a.served, a.labels)
        metrics[f"{name}_confident_error_share_before"] = ev.confident_error_share(a.raw, a.labels, review_threshold)
        metrics[f"{name}_confident_error_share"] = ev.confident_error_share(a.served, a.labels, review_threshold)
        metrics[f"{name}_review_share"] = float(np.mean(a.served.max(axis=1) < review_threshold))
    return metrics


def _review_threshold_metrics(answers: dict[str, Answers]) -> tuple[float, dict[str, float]]:
    """The review threshold that keeps unreviewed mistakes on photos within the target, chosen on the validation
    photos, and what it gives on the test split and the test photos."""
    # With calibrated probabilities a threshold of 0.7 lets through every answer that is right only 70-80 % of
    # the time, so the threshold, not the calibration, sets the wrong-and-confident share.
    # Chosen on 1,000 validation photos, a threshold aimed at exactly 2 % landed at 1.8-2.5 % on the test photos
    # (three default runs), so it aims REVIEW_MARGIN_Z standard errors of that share lower.
    photo_val = answers["photo_val"]
    val_target = ev.share_with_margin(CONFIDENT_ERROR_TARGET, len(photo_val.labels), REVIEW_MARGIN_Z)
    threshold = ev.threshold_for_error_share(photo_val.served, photo_val.labels, val_target)
    metrics = {"review_threshold_val_target_share": val_target, "review_threshold_for_target": threshold}
    for name in ("test", "photo_test"):
        served, labels = answers[name].served, answers[name].labels
        metrics[f"{name}_confident_error_share_at_target_threshold"] = ev.confident_error_share(
            served, labels, threshold
        )
        metrics[f"{name}_review_share_at_target_threshold"] = float(np.mean(served.max(axis=1) < threshold))
    return threshold, metrics


def _log_summary(cfg: TrainConfig, scored: Scored, metrics: dict[str, float], threshold: float) -> None:
    test_m, photo_m = scored.test, scored.photo_test
    worst = int(np.argmax(test_m.recall - photo_m.recall))
    log.info(
        "test accuracy %.4f, macro F1 %.4f (tta %s; the network alone: %.4f) | photos: val %.4f, test %.4f, "
        "worst class %s %.3f vs %.3f clean | T=%.2f, ECE test %.4f -> %.4f, photos %.4f -> %.4f | wrong and "
        "confident: test %.2f %%, photos %.2f %% (at a review threshold of %.2f: %.2f %%, reviewing %.1f %%)",
        test_m.accuracy,
        test_m.macro_f1,
        cfg.tta,
        metrics["test_accuracy_single_view"],
        scored.photo_val.accuracy,
        photo_m.accuracy,
        CLASS_NAMES[worst],
        photo_m.recall[worst],
        test_m.recall[worst],
        scored.temperature,
        metrics["test_ece_before"],
        metrics["test_ece"],
        metrics["photo_test_ece_before"],
        metrics["photo_test_ece"],
        100 * metrics["test_confident_error_share"],
        100 * metrics["photo_test_confident_error_share"],
        threshold,
        100 * metrics["photo_test_confident_error_share_at_target_threshold"],
        100 * metrics["photo_test_review_share_at_target_threshold"],
    )


def _parity_sets(data: EvaluationData) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """What the exported runtimes' parity is checked on: the clean splits, the validation photos (where confidence
    and unfamiliarity are near their thresholds) and the unfamiliar photos (where the score matters)."""
    sets = {
        "val": (data.val.images, data.val.labels),
        "test": (data.test.images, data.test.labels),
        "photo_val": (data.photo_val.images, data.photo_val.labels),
    }
    if data.unfamiliar_test is not None:
        sets[UNFAMILIAR_TEST] = (data.unfamiliar_test.images, None)
    return sets


def _log_reports(
    result: FitResult,
    data: EvaluationData,
    scored: Scored,
    probs: tuple[np.ndarray, np.ndarray],
    review_threshold: float,
) -> None:
    """The reports and plots of the test split and the test photos."""
    test, photo_test = data.test, data.photo_test
    test_m, photo_m = scored.test, scored.photo_test
    test_probs, photo_probs = probs
    mlflow.log_text(ev.classification_report(test_m), "evaluation/classification_report.txt")
    mlflow.log_text(ev.classification_report(photo_m), "evaluation/photo_classification_report.txt")
    mlflow.log_dict(
        {
            "accuracy": test_m.accuracy,
            "macro_f1": test_m.macro_f1,
            "confusion_matrix": test_m.confusion.tolist(),
            "per_class": test_m.as_metrics(""),
        },
        "evaluation/metrics.json",
    )
    mlflow.log_dict(photo_report(photo_test, photo_probs, test_m, review_threshold), "evaluation/photo_metrics.json")
    _log_png(ev.plot_confusion_matrix(test_m.confusion), "evaluation/confusion_matrix.png")
    _log_png(
        ev.plot_confusion_matrix(photo_m.confusion, title="Confusion matrix (photo benchmark, test"),
        "evaluation/photo_confusion_matrix.png",
    )
    _log_png(ev.plot_learning_curves(result.history), "evaluation/learning_curves.png")
    _log_png(ev.plot_misclassified(test.images, test.labels, test_probs), "evaluation/misclassified.png")
    _log_png(photo_failure_grid(photo_test, test, photo_probs), "evaluation/photo_failures.png")


def photo_report(
    photo_set: PhotoSet, probs: np.ndarray, clean: ClassificationMetrics, review_threshold: float
) -> dict[str, Any]:
    """The photo benchmark's numbers as JSON: overall, per class beside the clean test accuracy, per kind of
    photo (backdrop, item tone, cut, EXIF, megapixels, JPEG quality), and the confusion matrix."""

    m = ev.classification_metrics(photo_set.labels, probs.argmax(axis=1))
    correct = probs.argmax(axis=1) == photo_set.labels
    # The parameters are the generator's first draws, so they are known without rendering again.
    params = [
        draw_params(np.random.default_rng(photo_seed(photo_set.seed, photo_set.split, int(i))))
        for i in photo_set.indices
    ]
    kinds: dict[str, dict[str, list[bool]]] = {}

    def add(kind: str, value: str, ok: bool) -> None:
        kinds.setdefault(kind, {}).setdefault(value, []).append(bool(ok))

    for p, ok in zip(params, correct, strict=True):
        add("backdrop", p.texture or p.backdrop, ok)
        add("item_tone", p.item_tone, ok)
        add("cut", str(p.cut).lower(), ok)
        add("exif_rotated", str(p.exif_orientation != 1).lower(), ok)
        add("shadow", str(p.shadow > 0).lower(), ok)
        add("megapixels", "<1" if p.megapixels < 1 else "1-4" if p.megapixels < 4 else ">=4", ok)
        add("jpeg_quality", "50-69" if p.quality < 70 else "70-84" if p.quality < 85 else "85-95", ok)
    return {
        "n": len(photo_set),
        "seed": photo_set.seed,
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "failed_to_preprocess": photo_set.failed,
        "confident_error_share": ev.confident_error_share(probs, photo_set.labels, review_threshold),
        "per_class": {
            CLASS_NAMES[k]: {"photo": float(m.recall[k]), "clean_test": float(clean.recall[k]), "n": int(m.support[k])}
            for k in range(len(CLASS_NAMES))
        },
        "per_kind": {
            kind: {value: {"accuracy": float(np.mean(oks)), "n": len(oks)} for value, oks in sorted(values.items())}
            for kind, values in kinds.items()
        },
        "confusion_matrix": m.confusion.tolist(),
    }


def photo_failure_grid(photo_set: PhotoSet, split: Split, probs: np.ndarray, max_items: int = 24) -> bytes:
    """The most confident mistakes on the photos: each photo rendered again (seeded) beside the model's input."""

    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != photo_set.labels)
    n_wrong = len(wrong)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:max_items]
    photos = failure_photos(photo_set.split, split.images, photo_set.indices[wrong], photo_set.seed)
    return ev.plot_photo_failures(
        photos,
        photo_set.images[wrong],
        photo_set.labels[wrong],
        probs[wrong],
        title=f"Photo benchmark ({photo_set.split}): most confident mistakes, {n_wrong} of {len(photo_set)} wrong",
    )


def _log_png(data: bytes, artifact_file: str) -> None:

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_file).parent))


def real_slice_metrics(photo_set: PhotoSet, probs: np.ndarray, prefix: str = "photo_real_test_") -> dict[str, float]:
    """The real-surface slice's metrics: accuracy, macro F1, per class, and the accuracy per kind of surface and
    per kind of difficulty (``<prefix>accuracy_surface_<kind>``, ``<prefix>accuracy_<difficulty>``)."""
    m = ev.classification_metrics(photo_set.labels, probs.argmax(axis=1))
    right = probs.argmax(axis=1) == photo_set.labels
    metrics = {**m.as_metrics(prefix), f"{prefix}failed": float(photo_set.failed)}
    for kind, (accuracy, _) in accuracy_by_kind(real_kinds(photo_set), right).items():
        metrics[f"{prefix}accuracy_{kind.replace('=', '_')}"] = accuracy
    return metrics


def log_real_slice(model: keras.Model, photo_set: PhotoSet, split: Split) -> dict[str, float]:
    """Score the served model on the real-surface slice and log its metrics (``photo_real_test_*``), its report
    (``evaluation/photo_real_metrics.json``: per kind with counts) and its most confident mistakes."""
    probs = predict_probs(model, photo_set.images)
    metrics = real_slice_metrics(photo_set, probs)
    mlflow.log_metrics(metrics)
    right = probs.argmax(axis=1) == photo_set.labels
    by_kind = accuracy_by_kind(real_kinds(photo_set), right)
    mlflow.log_dict(
        {
            "benchmark": benchmark_id(photo_set),
            "n": len(photo_set),
            "accuracy": float(right.mean()),
            "failed_to_preprocess": photo_set.failed,
            "per_kind": {k: {"accuracy": a, "n": n} for k, (a, n) in by_kind.items()},
        },
        "evaluation/photo_real_metrics.json",
    )
    _log_png(photo_failure_grid(photo_set, split, probs), "evaluation/photo_real_failures.png")
    surfaces = ", ".join(f"{k.split('=')[1]} {a:.1%}" for k, (a, _) in by_kind.items() if k.startswith("surface="))
    log.info("real-surface photos: %.4f (%s)", float(right.mean()), surfaces)
    return metrics


# --- unfamiliarity: the threshold, what it flags, what it catches ------------------------------------------------


def log_unfamiliarity(
    model: keras.Model, cfg: TrainConfig, data: EvaluationData, outs: dict[str, np.ndarray]
) -> tuple[float | None, dict[str, float]]:
    """Choose the served model's unfamiliar threshold on the in-distribution validation photos (the benchmark's and
    the real-surface slice's: ``cfg.unfamiliar_share`` of them aimed :data:`REVIEW_MARGIN_Z` standard errors lower),
    then measure what it flags of every in-distribution set and what it catches of the unfamiliar test photos, per
    kind, with the AUROC against the in-distribution test photos; ``evaluation/unfamiliar.json``. Adds the outputs of
    the sets it scores to ``outs``. Returns the threshold (None for a model without the score) and the metrics."""
    from inference.unfamiliarity import has_unfamiliarity
    from model_training.unfamiliar_bench import choose_threshold, unfamiliar_metrics

    if not has_unfamiliarity(model):
        return None, {}
    named = {"photo_real_val": data.real_val, "photo_real_test": data.real_test, UNFAMILIAR_TEST: data.unfamiliar_test}
    for name, photo_set in named.items():
        if photo_set is not None and len(photo_set):
            outs[name] = predict_outputs(model, photo_set.images)
    u = {name: Scores.of(o).unfamiliarity.astype(np.float64) for name, o in outs.items()}
    photos = {
        split: np.concatenate([u[n] for n in (f"photo_{split}", f"photo_real_{split}") if n in u])
        for split in ("val", "test")
    }
    threshold, aimed = choose_threshold(photos["val"], cfg.unfamiliar_share, REVIEW_MARGIN_Z)
    flagged = {n: v for n, v in u.items() if n != UNFAMILIAR_TEST}
    flagged.update({"photos_val": photos["val"], "photos_test": photos["test"]})
    metrics = {
        "unfamiliar_threshold": threshold,
        "unfamiliar_share_target": cfg.unfamiliar_share,
        "unfamiliar_share_aimed": aimed,
    }
    if UNFAMILIAR_TEST in u:
        metrics.update(unfamiliar_metrics(threshold, flagged, data.unfamiliar_test, u[UNFAMILIAR_TEST], photos["test"]))
    else:
        metrics.update({f"unfamiliar_share_{n}": float(np.mean(v > threshold)) for n, v in flagged.items()})
    mlflow.log_dict({"threshold": threshold, **metrics}, "evaluation/unfamiliar.json")
    log.info(
        "unfamiliar threshold %.3f (aimed at %.2f %% of %d validation photos): flags %.2f %% of the test photos, "
        "%.2f %% of the clean test split; catches %s of the unfamiliar test photos",
        threshold,
        100 * aimed,
        len(photos["val"]),
        100 * metrics["unfamiliar_share_photos_test"],
        100 * metrics["unfamiliar_share_test"],
        f"{metrics['unfamiliar_caught']:.1%} (AUROC {metrics['unfamiliar_auroc']:.3f})"
        if UNFAMILIAR_TEST in u
        else "none (not rendered)",
    )
    return threshold, metrics


def _review_flags(outputs: np.ndarray, review_threshold: float, unfamiliar_threshold: float) -> np.ndarray:
    scores = Scores.of(outputs)
    return (scores.probs.max(axis=1) < review_threshold) | (scores.unfamiliarity > unfamiliar_threshold)


def unreviewed_error_share(
    outputs: np.ndarray, labels: np.ndarray, review_threshold: float, unfamiliar_threshold: float
) -> float:
    """The share of answers that are wrong and go to no person (neither low confidence nor unfamiliar)."""
    wrong = Scores.of(outputs).probs.argmax(axis=1) != labels
    return float(np.mean(wrong & ~_review_flags(outputs, review_threshold, unfamiliar_threshold)))


def review_share(outputs: np.ndarray, review_threshold: float, unfamiliar_threshold: float) -> float:
    """The share of answers a person looks at, for either reason."""
    return float(np.mean(_review_flags(outputs, review_threshold, unfamiliar_threshold)))
