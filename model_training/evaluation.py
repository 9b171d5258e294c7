"""Evaluation metrics and report artifacts (pure numpy + matplotlib Agg; no MLflow, no Keras).

Usage: imported by :mod:`model_training.train`; each ``plot_*`` returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.labels import CLASS_NAMES, NUM_CLASSES


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    confusion: np.ndarray  # (C, C) rows = true class, columns = predicted class
    precision: np.ndarray  # (C,)
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1))

    def as_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat MLflow metric names: ``test_accuracy``, ``test_macro_f1``, ``test_f1_<slug>`` ..."""
        from common.labels import class_slug

        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}
        for k in range(len(CLASS_NAMES)):
            slug = class_slug(k)
            out[f"{prefix}precision_{slug}"] = float(self.precision[k])
            out[f"{prefix}recall_{slug}"] = float(self.recall[k])
            out[f"{prefix}f1_{slug}"] = float(self.f1[k])
        return out


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> ClassificationMetrics:
    """Accuracy, confusion matrix and per-class precision/recall/F1 (0 where undefined)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label shapes differ: {y_true.shape} vs {y_pred.shape}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    accuracy = float(tp.sum() / max(len(y_true), 1))
    return ClassificationMetrics(accuracy, cm, precision, recall, f1, actual.astype(np.int64))


def classification_report(m: ClassificationMetrics, class_names: Sequence[str] = CLASS_NAMES) -> str:
    """A fixed-width text report, like scikit-learn's."""
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    for k, name in enumerate(class_names):
        lines.append(f"{name:<{width}}{m.precision[k]:>10.4f}{m.recall[k]:>10.4f}{m.f1[k]:>10.4f}{m.support[k]:>10d}")
    total = int(m.support.sum())
    lines += [
        "",
        f"{'accuracy':<{width}}{'':>10}{'':>10}{m.accuracy:>10.4f}{total:>10d}",
        f"{'macro avg':<{width}}{m.precision.mean():>10.4f}{m.recall.mean():>10.4f}{m.macro_f1:>10.4f}{total:>10d}",
    ]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES, title: str = "Confusion matrix (test"
) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > threshold else "black",
            )
    ax.set_title(f"{title}, n={int(cm.sum())})")
    return _png(fig)


def plot_learning_curves(history: Mapping[str, Sequence[float]]) -> bytes:
    """Loss and accuracy per epoch for train and validation (Keras ``History.history`` keys)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = history.get(f"{prefix}{metric}")
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=f"{'val' if prefix else 'train'} {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def plot_misclassified(
    images: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    max_items: int = 36,
) -> bytes:
    """A grid of the most confidently wrong test images, captioned 'true -> predicted (confidence)'."""
    plt = _pyplot()
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:max_items]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.1), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong, strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"{class_names[int(y_true[i])]}\n-> {class_names[int(y_pred[i])]} ({probs[i, y_pred[i]]:.2f})", fontsize=7
        )
    fig.suptitle(f"Most confident mistakes ({len(np.flatnonzero(y_pred != y_true))} wrong in total)")
    return _png(fig)


# --- calibration -------------------------------------------------------------------------------------------


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.sum() * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return total / max(len(conf), 1)


def confident_error_share(probs: np.ndarray, y_true: np.ndarray, threshold: float) -> float:
    """Share of ALL answers that are wrong with a confidence at or above ``threshold``: mistakes nobody reviews
    (an item ``needs_review`` only when its confidence is below the threshold)."""
    if len(probs) == 0:
        return 0.0
    wrong = probs.argmax(axis=1) != np.asarray(y_true)
    return float(np.mean(wrong & (probs.max(axis=1) >= threshold)))


def threshold_for_error_share(probs: np.ndarray, y_true: np.ndarray, max_share: float) -> float:
    """The lowest review threshold (answers with a confidence below it go to a person) at which the wrong answers
    at or above it are at most ``max_share`` of all answers; 1.0 when even the most confident answers exceed it."""
    n = len(probs)
    if n == 0:
        return 0.0
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    wrong_kept = np.cumsum(probs.argmax(axis=1)[order] != np.asarray(y_true)[order])
    # A threshold equal to conf_sorted[i] keeps every answer up to the last one with that same confidence.
    last_of_value = np.flatnonzero(np.append(conf_sorted[1:] != conf_sorted[:-1], True))
    ok = last_of_value[wrong_kept[last_of_value] <= max_share * n]
    if len(ok) == 0:
        return 1.0
    if ok.max() == n - 1:
        return 0.0
    return float(conf_sorted[ok.max()])


def share_with_margin(share: float, n: int, z: float = 1.0) -> float:
    """``share`` lowered by ``z`` standard errors of a share measured on ``n`` items: a limit chosen on a sample
    then holds on new data with margin (one standard error: about 5 times in 6)."""
    return max(0.0, share - z * float(np.sqrt(share * (1.0 - share) / max(n, 1))))


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: what a model whose logits are divided by ``T`` would answer."""
    z = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, lo: float = 0.25, hi: float = 8.0) -> float:
    """The temperature minimising the negative log-likelihood of ``y_true`` (golden-section search on log T;
    the NLL is convex in 1/T). Fitted on validation data only."""
    y = np.asarray(y_true)

    def nll(log_t: float) -> float:
        p = with_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2))


def plot_photo_failures(
    photos: Sequence,
    model_images: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    title: str = "Photo benchmark: most confident mistakes",
) -> bytes:
    """Pairs of (the photo as taken, what the model saw after preprocessing), captioned 'true -> predicted (p)'.
    ``photos`` are Pillow images, aligned with ``model_images``, ``y_true`` and ``probs``."""
    plt = _pyplot()
    y_pred = probs.argmax(axis=1)
    n = len(photos)
    cols = 4
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.5, rows * 1.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, cols)
        axes[r, 2 * c].imshow(np.asarray(photos[k]))
        axes[r, 2 * c + 1].imshow(model_images[k], cmap="gray", vmin=0, vmax=255)
        axes[r, 2 * c].set_title(
            f"{class_names[int(y_true[k])]} -> {class_names[int(y_pred[k])]} ({probs[k, y_pred[k]]:.2f})",
            fontsize=6,
            loc="left",
        )
    fig.suptitle(title)
    return _png(fig)
