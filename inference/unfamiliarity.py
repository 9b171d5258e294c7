"""How unfamiliar an image is to the served model: scores that say "this is not one of the 10 classes".

Usage::

    extract = FeatureExtractor(model)                   # the served network: image -> (penultimate features, logits)
    train_feats, _ = extract(train_images)
    feats, logits = extract(images)                     # 28x28 uint8 model images
    fit = fit_gaussians(train_feats, train_labels)      # class means + one shared covariance, on the training split
    s = all_scores(feats, logits, fit)                  # {"msp": ..., "energy": ..., "mahalanobis": ..., ...}
    t = threshold_at_share(s["mahalanobis"][in_dist], 0.05)   # flags 5 % of in-distribution images
    auroc(s["mahalanobis"][in_dist], s["mahalanobis"][ood])

Every score is "higher = more unfamiliar", computed from what one forward pass of the served network already has:

- ``msp``: 1 - the largest calibrated softmax probability (the review threshold's confidence, turned around);
- ``energy``: the negative log-sum-exp of the logits (Liu et al. 2020): in-distribution images get large logits;
- ``mahalanobis``: the smallest squared Mahalanobis distance of the penultimate features (the 192 hidden units)
  to a class mean, with one covariance shared by the classes (Lee et al. 2018), fitted on the training split;
- ``relative_mahalanobis``: that minus the distance to one Gaussian of all training features (Ren et al. 2021):
  what is unusual for any class, not what is unusual for every image;
- ``relative_mahalanobis+energy`` (:data:`COMBINED`): the sum of those two, each standardised by its median and MAD
  on in-distribution validation images (:func:`fit_standardiser`, :func:`with_combined`): the features' view and the
  logits' view of the same pass;
- ``outlier_exposure`` (:data:`OE`): outlier exposure, post hoc (Hendrycks et al. 2019, without retraining the
  network): a logistic regression (:class:`OutlierHead`, :func:`choose_head`) on the 192 features and the two
  standardised parts of :data:`COMBINED`, fitted on in-distribution images against photos of things that are not
  clothing; its logit is the score. It adds one 192-weight dot product to the combined score's cost.

Cost per image beyond the network (d = 192 features, 10 classes): energy ~2 x 10 FLOPs; the Mahalanobis scores
project the features with the Cholesky factor of the precision (d^2 = 36,864 multiply-adds, 73,728 FLOPs) and take
10 (11 with the relative one) squared distances of d (~4,000 FLOPs): ~0.08 MFLOPs, against 36.3 MFLOPs for the
network (:func:`score_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCORES = ("msp", "energy", "mahalanobis", "relative_mahalanobis")
COMBINED = "relative_mahalanobis+energy"
COMBINED_PARTS = ("relative_mahalanobis", "energy")
OE = "outlier_exposure"  # the head's logit on the features and COMBINED's parts (:class:`OutlierHead`)
FEATURE_LAYER = "hidden"  # the penultimate layer of the default architecture; "flatten" for one without it
# Added to the shared covariance's diagonal, relative to its mean variance: 192 features from 55,000 images are
# well determined, but dead ReLU units have zero variance.
_SHRINK = 1e-3


@dataclass(frozen=True)
class GaussianFit:
    """Class-conditional Gaussians with a shared covariance, stored as what scoring needs: the class means and the
    global mean projected by ``whiten`` (the Cholesky factor of the precision), so a distance is a plain sum of
    squares after one matrix product."""

    whiten: np.ndarray  # (d, d): ||whiten.T @ (f - mu)||^2 = (f - mu)^T Sigma^-1 (f - mu)
    class_means: np.ndarray  # (k, d) projected
    whiten_all: np.ndarray  # (d, d) for the one Gaussian of all features
    mean_all: np.ndarray  # (d,) projected by whiten_all

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"whiten": self.whiten, "class_means": self.class_means, "whiten_all": self.whiten_all,
                "mean_all": self.mean_all}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Any) -> GaussianFit:
        return cls(*(np.asarray(arrays[k], dtype=np.float64) for k in ("whiten", "class_means", "whiten_all",
                                                                       "mean_all")))  # fmt: skip


def feature_layer_name(model: Any) -> str:
    names = {layer.name for layer in model.layers}
    return FEATURE_LAYER if FEATURE_LAYER in names else "flatten"


def feature_model(model: Any) -> Any:
    """A Keras model with ``model``'s weights: image -> (penultimate features, logits). The served model's own
    output is untouched (its softmax is the logits divided by the temperature)."""
    import keras

    return keras.Model(model.inputs, [model.get_layer(feature_layer_name(model)).output,
                                      model.get_layer("logits").output])  # fmt: skip


class FeatureExtractor:
    """``model``'s penultimate features and logits of 28x28 uint8 images, through one traced graph (built once)."""

    def __init__(self, model: Any, batch_size: int = 1024) -> None:
        import tensorflow as tf

        heads = feature_model(model)
        self._run = tf.function(lambda x: heads(x, training=False), reduce_retracing=True)
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, d) penultimate features and (N, 10) logits (images through ``to_model_batch``)."""
        import tensorflow as tf

        from data_processing.preprocessing import to_model_batch

        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, z = self._run(tf.constant(to_model_batch(images[i : i + self.batch_size])))
            feats.append(np.asarray(f, dtype=np.float64))
            logits.append(np.asarray(z, dtype=np.float64))
        return np.concatenate(feats), np.concatenate(logits)


def _whitener(centred: np.ndarray) -> np.ndarray:
    cov = centred.T @ centred / max(1, len(centred) - 1)
    cov += _SHRINK * float(np.trace(cov)) / len(cov) * np.eye(len(cov)) + 1e-9 * np.eye(len(cov))
    return np.linalg.cholesky(np.linalg.inv(cov))


def fit_gaussians(features: np.ndarray, labels: np.ndarray) -> GaussianFit:
    """Class means and a shared covariance (the within-class scatter), and one Gaussian of all features."""
    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == k].mean(axis=0) for k in classes])
    whiten = _whitener(features - means[np.searchsorted(classes, labels)])
    mean_all = features.mean(axis=0)
    whiten_all = _whitener(features - mean_all)
    return GaussianFit(whiten, means @ whiten, whiten_all, mean_all @ whiten_all)


def _min_sq_distance(projected: np.ndarray, means: np.ndarray) -> np.ndarray:
    d2 = (projected**2).sum(axis=1)[:, None] - 2 * projected @ means.T + (means**2).sum(axis=1)[None, :]
    return d2.min(axis=1)


def all_scores(features: np.ndarray, logits: np.ndarray, fit: GaussianFit, temperature: float = 1.0) -> dict:
    """Every score of :data:`SCORES` per image (higher = more unfamiliar)."""
    from scipy.special import logsumexp, softmax

    logits = np.asarray(logits, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    maha = _min_sq_distance(features @ fit.whiten, fit.class_means)
    background = ((features @ fit.whiten_all - fit.mean_all) ** 2).sum(axis=1)
    return {
        "msp": 1.0 - softmax(logits / temperature, axis=1).max(axis=1),
        "energy": -logsumexp(logits, axis=1),
        "mahalanobis": maha,
        "relative_mahalanobis": maha - background,
    }


def fit_standardiser(reference: dict, names: tuple[str, ...] = COMBINED_PARTS) -> dict[str, tuple[float, float]]:
    """Per score in ``names``, its median and MAD-based spread on in-distribution ``reference`` scores."""
    out = {}
    for name in names:
        values = np.asarray(reference[name], dtype=np.float64)
        med = float(np.median(values))
        out[name] = (med, max(1.4826 * float(np.median(np.abs(values - med))), 1e-12))
    return out


def with_combined(scores: dict, standardiser: dict[str, tuple[float, float]]) -> dict:
    """``scores`` plus :data:`COMBINED`: the sum of its parts, each standardised."""
    total = sum((np.asarray(scores[n]) - med) / spread for n, (med, spread) in standardiser.items())
    return {**scores, COMBINED: total}


def threshold_at_share(in_scores: np.ndarray, share: float) -> float:
    """The score above which ``share`` of the in-distribution images lie (they are the ones flagged)."""
    return float(np.quantile(np.asarray(in_scores, dtype=np.float64), 1.0 - share))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling ``out_scores`` (positives) from ``in_scores`` by "higher is out"
    (the Mann-Whitney statistic, ties counted half)."""
    from scipy.stats import rankdata

    both = np.concatenate([in_scores, out_scores])
    ranks = rankdata(both)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def score_flops(score: str, dims: int, classes: int = 10) -> int:
    """FLOPs per image a score adds to the network's forward pass (a multiply-add = 2)."""
    if score == "msp":
        return 4 * classes  # the softmax is in the served model already; its max
    if score == "energy":
        return 3 * classes  # exp, sum, log
    project = 2 * dims * dims
    distances = 3 * dims * classes
    if score == "mahalanobis":
        return project + distances
    if score == "relative_mahalanobis":
        return 2 * project + distances + 3 * dims
    if score == COMBINED:
        return score_flops("relative_mahalanobis", dims, classes) + score_flops("energy", dims, classes) + 4
    if score == OE:  # the same parts, and the features weighed in the final layer
        return score_flops(COMBINED, dims, classes) + 2 * dims
    raise ValueError(f"unknown score {score!r}; choose from {(*SCORES, COMBINED, OE)}")


# --- the score inside the served model ------------------------------------------------------------------------
# The served model answers (N, 11): the 10 calibrated probabilities, then the score (:data:`COMBINED`, or with an
# :class:`OutlierHead` its logit: the final layer then also reads the features and weighs the two parts),
# computed from the same forward pass by stock Keras layers whose weights are the fitted statistics, so every runtime
# that runs the model (the Keras graph, ONNX Runtime, LiteRT float and int8) computes the score too, and the export's
# parity check covers it. The relative Mahalanobis distance is rewritten so one matrix product does it:
#   min_k ||f W - M_k||^2 - ||f W_a - m_a||^2 = f Q f^T + min_k (f a_k + b_k),   Q = W W^T - W_a W_a^T,
# with a_k = -2 W M_k^T + 2 W_a m_a^T and b_k = ||M_k||^2 - ||m_a||^2; the energy is -logsumexp of the logits, which
# is logits - log_softmax(logits) in every column (averaged over the columns).
OUTPUT_COLUMN = 10  # the score's column in the served model's output; columns 0-9 are the probabilities
SCORE_LAYER = "unfamiliarity"


@dataclass(frozen=True)
class OutlierHead:
    """Outlier exposure, post hoc: a logistic regression telling photos of things that are not one of the 10 classes
    (label 1) from in-distribution images (label 0) by the penultimate features and the two standardised parts of
    :data:`COMBINED`. Its logit is the served score. Stored with the inputs' standardisation folded in, so it applies
    to the raw features: ``features @ feature_weights + parts @ part_weights + bias``."""

    feature_weights: np.ndarray  # (d,) on the raw penultimate features
    part_weights: np.ndarray  # (2,) on the standardised relative Mahalanobis and energy (COMBINED_PARTS' order)
    bias: float
    l2: float  # the L2 penalty chosen on validation (for the record)

    def logit(self, features: np.ndarray, parts: np.ndarray) -> np.ndarray:
        return features @ self.feature_weights + parts @ self.part_weights + self.bias


@dataclass(frozen=True)
class UnfamiliarityStats:
    """What the served model needs to compute the score: the Gaussians (training split), the standardiser of
    the two parts (in-distribution validation images) and, optionally, the outlier-exposure head on top (without
    one, the score is :data:`COMBINED`, as in every version registered before the head existed)."""

    fit: GaussianFit
    standardiser: dict[str, tuple[float, float]]
    head: OutlierHead | None = None

    def with_head(self, head: OutlierHead | None) -> UnfamiliarityStats:
        return UnfamiliarityStats(self.fit, self.standardiser, head)

    def served_weights(self) -> dict[str, np.ndarray]:
        """The constant weights of the score's layers (float64; Keras casts them). The final layer reads
        ``[quadratic terms (d), logits - log_softmax (k), nearest class (1)]`` and, with a head, the features (d)."""
        f = self.fit
        dims, classes = f.whiten.shape[0], f.class_means.shape[0]
        (med_r, s_r), (med_e, s_e) = self.standardiser["relative_mahalanobis"], self.standardiser["energy"]
        q = f.whiten @ f.whiten.T - f.whiten_all @ f.whiten_all.T
        a = -2.0 * f.whiten @ f.class_means.T + 2.0 * (f.whiten_all @ f.mean_all)[:, None]  # (d, k)
        b = (f.class_means**2).sum(axis=1) - float((f.mean_all**2).sum())
        # the standardised parts' weights: the combined score sums them, a head weighs them and adds the features
        c_r, c_e = (1.0, 1.0) if self.head is None else (float(w) for w in self.head.part_weights)
        # sum of the quadratic terms + the nearest class (already / s_r), energy = -mean(logits - log_softmax)
        kernel = [np.full(dims, c_r), np.full(classes, -c_e / (classes * s_e)), [-c_r]]
        bias = -c_r * med_r / s_r - c_e * med_e / s_e
        if self.head is not None:
            kernel.append(self.head.feature_weights)
            bias += self.head.bias
        return {
            "quadratic": q / s_r,  # scaled here, so the products stay near the score's own scale
            "classes_kernel": -a / s_r,  # negated: the nearest class is the largest of these
            "classes_bias": -b / s_r,
            "final_kernel": np.concatenate(kernel)[:, None],
            "final_bias": np.array([bias]),
        }


def fit_stats(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    reference_features: np.ndarray,
    reference_logits: np.ndarray,
) -> UnfamiliarityStats:
    """The Gaussians of ``train_features`` and the standardiser of :data:`COMBINED`'s parts on the in-distribution
    ``reference`` images (their features and raw logits)."""
    fit = fit_gaussians(train_features, train_labels)
    return UnfamiliarityStats(fit, fit_standardiser(all_scores(reference_features, reference_logits, fit)))


def combined_scores(features: np.ndarray, logits: np.ndarray, stats: UnfamiliarityStats) -> np.ndarray:
    """:data:`COMBINED` in numpy, float64: what the served model's last column computes without a head."""
    return with_combined(all_scores(features, logits, stats.fit), stats.standardiser)[COMBINED]


def standardised_parts(features: np.ndarray, logits: np.ndarray, stats: UnfamiliarityStats) -> np.ndarray:
    """(N, 2): :data:`COMBINED_PARTS` of each image, standardised as the combined score standardises them."""
    scores = all_scores(features, logits, stats.fit)
    return np.stack([(scores[n] - stats.standardiser[n][0]) / stats.standardiser[n][1] for n in COMBINED_PARTS], 1)


def served_scores(features: np.ndarray, logits: np.ndarray, stats: UnfamiliarityStats) -> np.ndarray:
    """The served score in numpy, float64: the head's logit, or :data:`COMBINED` for stats without a head (what
    the served model's last column computes; the tests compare)."""
    if stats.head is None:
        return combined_scores(features, logits, stats)
    return stats.head.logit(np.asarray(features, dtype=np.float64), standardised_parts(features, logits, stats))


# --- outlier exposure: the head's fit -----------------------------------------------------------------------------
# A logistic regression (L2-penalised, class-balanced) fitted by L-BFGS on standardised inputs. scipy is already a
# dependency; scikit-learn is not (it is installed only as MLflow's), and the fit is a dozen lines.
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float, start: np.ndarray | None = None) -> np.ndarray:
    """``[weights, bias]`` minimising the class-balanced mean log-loss + ``l2``/2 ||w||^2 (x standardised), from
    ``start`` (a neighbouring penalty's solution: the loss is convex, so only the time changes)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    weight = np.where(y == 1, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((1 - y).sum())))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:-1] + theta[-1]
        nll = -(weight * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum()
        g = weight * (expit(z) - y)
        return nll + 0.5 * l2 * float(theta[:-1] @ theta[:-1]), np.append(x.T @ g + l2 * theta[:-1], g.sum())

    x0 = np.zeros(x.shape[1] + 1) if start is None else start
    return minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 2000}).x


class _Design:
    """The head's fitting rows standardised (mean 0, sd 1 per column; constant columns left at sd 1) and labelled
    (1 = unfamiliar); :meth:`head` folds the standardisation back into a fit's weights."""

    def __init__(self, inside: np.ndarray, outside: np.ndarray, dims: int) -> None:
        x = np.concatenate([inside, outside]).astype(np.float64)
        self.mean, sd = x.mean(axis=0), x.std(axis=0)
        self.sd = np.where(sd > 1e-9, sd, 1.0)  # dead ReLU units: constant, weight 0 either way
        self.x = (x - self.mean) / self.sd
        self.y = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
        self.dims = dims

    def head(self, theta: np.ndarray, l2: float) -> OutlierHead:
        raw = theta[:-1] / self.sd
        return OutlierHead(raw[: self.dims], raw[self.dims :], float(theta[-1] - self.mean @ raw), l2)


def fit_head_at(inside: np.ndarray, outside: np.ndarray, l2: float, dims: int) -> OutlierHead:
    """The head of one penalty, fitted on rows ``[features (dims), standardised parts (2)]`` of in-distribution
    images (``inside``) and unfamiliar photos (``outside``); the standardisation folded into its weights."""
    design = _Design(inside, outside, dims)
    return design.head(_logistic_fit(design.x, design.y, l2), l2)


@dataclass(frozen=True)
class HeadChoice:
    """The chosen head and, per penalty tried, the share of unfamiliar validation photos caught at the threshold
    flagging ``share`` of the in-distribution validation images, and the AUROC."""

    head: OutlierHead
    tried: dict[float, tuple[float, float]]  # l2 -> (caught, AUROC)


def choose_head(fit_pair: tuple[np.ndarray, np.ndarray], val_pair: tuple[np.ndarray, np.ndarray], dims: int,
                share: float = 0.05, grid: tuple[float, ...] = L2_GRID) -> HeadChoice:  # fmt: skip
    """Fit the head at each penalty of ``grid`` on ``fit_pair`` (inside, outside rows) and keep the one catching
    most of ``val_pair``'s outside rows at the threshold flagging ``share`` of its inside rows (AUROC breaks
    ties, then the stronger penalty): the penalty is chosen on validation, never on what it was fitted on. The fits
    run from the strongest penalty down, each starting from the previous solution."""
    design = _Design(*fit_pair, dims)
    best, tried, theta = None, {}, None
    for l2 in sorted(grid, reverse=True):
        theta = _logistic_fit(design.x, design.y, l2, theta)
        head = design.head(theta, l2)
        s_in, s_out = (head.logit(v[:, :dims], v[:, dims:]) for v in val_pair)
        tried[l2] = (float(np.mean(s_out > threshold_at_share(s_in, share))), auroc(s_in, s_out))
        if best is None or tried[l2] > tried[best.l2]:
            best = head
    assert best is not None
    return HeadChoice(best, dict(sorted(tried.items())))


def head_rows(features: np.ndarray, logits: np.ndarray, stats: UnfamiliarityStats) -> np.ndarray:
    """The head's input rows: ``[features, standardised parts]`` (N, d + 2)."""
    return np.concatenate([np.asarray(features, np.float64), standardised_parts(features, logits, stats)], axis=1)


# LiteRT's dynamic-range conversion (the int8 runtime) quantizes the weights of a layer from this many on; the
# score's projections are split into layers below it, so the int8 runtime computes the score in float32 (quantized,
# it moved the score by up to 1.7 standard units at the 99th percentile against 0.35-0.85 from the network's own
# int8 features; docs/training.md).
QUANTIZED_FROM = 1024
MAX_SPLIT = 64  # more layers than this (wide features): one layer, quantized in int8


_JOINED = "probs_and_unfamiliarity"  # the layer joining the probabilities and the score


def _float_dense(x: Any, kernel: np.ndarray, bias: np.ndarray | None, name: str) -> Any:
    """``x @ kernel (+ bias)`` as Dense layers of fewer than :data:`QUANTIZED_FROM` weights each (one layer when that
    would take more than :data:`MAX_SPLIT`), joined; their weights set."""
    from keras import layers

    dims, units = kernel.shape
    width = (QUANTIZED_FROM - 1) // dims
    if width < 1 or -(-units // width) > MAX_SPLIT:
        width = units
    parts = []
    for j, lo in enumerate(range(0, units, width)):
        hi = min(units, lo + width)
        dense = layers.Dense(hi - lo, use_bias=bias is not None, name=f"{name}_{j:02d}" if width < units else name)
        parts.append(dense(x))
        dense.set_weights([kernel[:, lo:hi]] + ([bias[lo:hi]] if bias is not None else []))
    return parts[0] if len(parts) == 1 else layers.Concatenate(name=name)(parts)


def with_unfamiliarity(model: Any, stats: UnfamiliarityStats) -> Any:
    """``model`` ((N, 28, 28, 1) -> (N, 10) probabilities, with a ``logits`` layer) with the score as an 11th output
    column, from stock layers only: it saves, loads, exports and serves like ``model`` (the weights are its own)."""
    import keras
    from keras import layers

    w = stats.served_weights()
    classes = w["classes_bias"].shape[0]
    feats = model.get_layer(feature_layer_name(model)).output
    logits = model.get_layer("logits").output
    terms = layers.Multiply(name="unf_quadratic_terms")([feats, _float_dense(feats, w["quadratic"], None,
                                                                              "unf_quadratic")])  # fmt: skip
    near = _float_dense(feats, w["classes_kernel"], w["classes_bias"], "unf_classes")
    nearest = layers.GlobalMaxPooling1D(name="unf_nearest")(layers.Reshape((classes, 1), name="unf_col")(near))
    log_softmax = layers.Activation("log_softmax", name="unf_log_softmax")(logits)
    logsumexp = layers.Subtract(name="unf_logsumexp")([logits, log_softmax])
    # with a head the features join the final layer's input (its weights stay below QUANTIZED_FROM: float32)
    parts = layers.Concatenate(name="unf_parts")([terms, logsumexp, nearest, *([feats] if stats.head else [])])
    score = _float_dense(parts, w["final_kernel"], w["final_bias"], SCORE_LAYER)
    out = layers.Concatenate(name=_JOINED)([model.output, score])
    return keras.Model(model.inputs, out, name=model.name)


def network_of(model: Any) -> Any:
    """``model`` without the score :func:`with_unfamiliarity` added: the network whose weights training sets (the
    same layers and weights, shared; ``model`` itself when it has no score)."""
    import keras

    try:
        joined = model.get_layer(_JOINED)
    except ValueError:
        return model
    return keras.Model(model.inputs, joined.input[0], name=model.name)


def has_unfamiliarity(model: Any) -> bool:
    """Whether a Keras model (or the network inside its test-time views) computes the score."""
    from inference.tta import tta_of

    return SCORE_LAYER in {layer.name for layer in tta_of(model)[0].layers}
