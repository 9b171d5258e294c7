"""Drift tests of a window of recent items against the model version's reference (pure functions).

The family of tests, on the per-item features of :func:`monitoring.features.item_features`:

* one two-sample Kolmogorov-Smirnov test per continuous feature (confidence, entropy, each class's softmax
  probability, mean intensity, contrast, foreground share, ...), asymptotic p-value (Smirnov's limiting
  distribution at the effective sample size ``n*m/(n+m)``, as ``scipy.stats.ks_2samp(method="asymp")``).
  Ties (saturated confidences of 1.0) make KS conservative, never anti-conservative; the false-alarm rate is
  measured by ``python -m monitoring.evaluate_drift``;
* one chi-squared test of homogeneity on the predicted-class counts (window vs reference, a 2 x K table, so the
  reference's own sampling noise is accounted for). Classes too rare for the chi-squared approximation
  (expected window count < 5) are pooled into one cell (itself folded into the smallest cell if still sparse);
  classes absent from both are dropped.

Bonferroni correction over the whole family keeps the family-wise false-alarm rate at or below ``alpha``
(Holm would give the same overall verdict: both fire iff the smallest p-value is below ``alpha / m``).

Each test carries its plain-language ``reading`` (what it means when it fires, :func:`reading_of`), and a report
that found drift one for the whole (:func:`drift_reading`): only the predicted-class test fired -> the mix of
categories changed; an image statistic fired -> the photos changed; else the model's outputs moved with the photos
unchanged -> unfamiliar items. The API, the nightly summary and the dashboard show them.

The reference is never modified: :class:`monitoring.reference.Reference` holds read-only copies, and this module
only reads them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from common.labels import CLASS_NAMES, NUM_CLASSES
from monitoring.features import unfamiliar_share
from monitoring.reference import Reference

CLASS_FEATURE = "predicted_class"
STATUS_OK = "ok"
STATUS_DRIFT = "drift"
STATUS_INSUFFICIENT = "insufficient_data"
PSI_BINS = 10
MIN_EXPECTED = 5.0  # the usual validity rule of the chi-squared approximation


@dataclass(frozen=True)
class DriftConfig:
    alpha: float = 0.05  # family-wise, Bonferroni-corrected over the KS tests (+ chi-squared)
    min_window: int = 100  # below this: status "insufficient_data"
    window_size: int = 500  # serving window capacity (most recent items)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_window < 1:
            raise ValueError(f"min_window must be >= 1, got {self.min_window}")
        if self.window_size < self.min_window:
            raise ValueError(f"window_size ({self.window_size}) must be >= min_window ({self.min_window})")


@dataclass
class TestResult:
    __test__ = False  # not a pytest class

    name: str  # e.g. "ks:confidence", "chi2:predicted_class"
    feature: str
    test: str  # "ks" | "chi2"
    statistic: float
    p_value: float
    p_value_adjusted: float
    effect_size: float
    effect_size_name: str  # "psi" | "cramers_v"
    fired: bool
    extra: dict[str, float] = field(default_factory=dict)  # e.g. wasserstein distance, window/reference means
    reading: str = ""  # what it means when it fires, for people (reading_of)


@dataclass
class DriftReport:
    status: str  # "ok" | "drift" | "insufficient_data"
    window_size: int
    reference_size: int
    alpha: float
    tests: list[TestResult] = field(default_factory=list)
    min_window: int = 0
    skipped: list[str] = field(default_factory=list)  # features not tested (missing or too few finite values)
    reference_meta: dict[str, str] = field(default_factory=dict)
    # Shares of each predicted class, in the window and in the reference (the seed API's drift fields).
    current_distribution: dict[str, float] = field(default_factory=dict)
    baseline_distribution: dict[str, float] = field(default_factory=dict)
    # The share of the window's items the served model called unfamiliar (not one of the 10 classes), among those
    # scored by a version that computes the score (unfamiliar_items of them); None: no such item. Not a drift test.
    unfamiliar_share: float | None = None
    unfamiliar_items: int = 0

    @property
    def reading(self) -> str:
        """What the fired tests mean together, for people ("" without drift)."""
        return drift_reading([t.feature for t in self.tests if t.fired])

    @property
    def drift_detected(self) -> bool:
        return self.status == STATUS_DRIFT

    @property
    def fired(self) -> list[str]:
        return [t.name for t in self.tests if t.fired]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no NaN/inf: undefined numbers become ``None``)."""
        return _json_safe(
            {
                "status": self.status,
                "drift_detected": self.drift_detected,
                "fired": self.fired,
                "reading": self.reading,
                "window_size": self.window_size,
                "reference_size": self.reference_size,
                "min_window": self.min_window,
                "alpha": self.alpha,
                "correction": "bonferroni",
                "n_tests": len(self.tests),
                "tests": [asdict(t) for t in self.tests],
                "skipped": list(self.skipped),
                "reference_meta": dict(self.reference_meta),
                "current_distribution": dict(self.current_distribution),
                "baseline_distribution": dict(self.baseline_distribution),
                "unfamiliar_share": self.unfamiliar_share,
                "unfamiliar_items": self.unfamiliar_items,
            }
        )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# --- single tests -------------------------------------------------------------------------------------------


def ks_statistic_sorted(ref_sorted: np.ndarray, window: np.ndarray) -> float:
    """Two-sample KS statistic D = sup |F_ref - F_win|, exact with ties.

    Between consecutive window values F_win is flat and F_ref monotone, so the supremum over all data points
    is attained at a window value, either just at it (right limits) or just below it (left limits): four
    binary searches of the window's values instead of merging both samples.
    """
    w = np.sort(window)
    n_ref, n_win = ref_sorted.size, w.size
    right = np.abs(np.searchsorted(ref_sorted, w, side="right") / n_ref - np.searchsorted(w, w, side="right") / n_win)
    left = np.abs(np.searchsorted(ref_sorted, w, side="left") / n_ref - np.searchsorted(w, w, side="left") / n_win)
    return float(max(right.max(), left.max()))


def ks_pvalues(d: np.ndarray, n_ref: np.ndarray, n_win: np.ndarray) -> np.ndarray:
    """Asymptotic two-sided p-values, exactly as ``scipy.stats.ks_2samp(..., method="asymp")`` computes them
    (Smirnov's distribution at the rounded effective size ``n*m/(n+m)``); vectorised over tests."""
    n_ref = np.asarray(n_ref, dtype=np.float64)
    n_win = np.asarray(n_win, dtype=np.float64)
    en = np.round(n_ref * n_win / (n_ref + n_win))
    return np.clip(stats.kstwo.sf(np.asarray(d, dtype=np.float64), en), 0.0, 1.0)


def ks_pvalue(d: float, n_ref: int, n_win: int) -> float:
    return float(ks_pvalues(np.array([d]), np.array([n_ref]), np.array([n_win]))[0])


def psi_bins(ref_sorted: np.ndarray, bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Reference quantile bin edges (tied quantiles merged) and the reference's share in each bin."""
    edges = np.unique(np.quantile(ref_sorted, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, ref_sorted, side="right"), minlength=edges.size + 1)
    return edges, counts / ref_sorted.size


def psi(edges: np.ndarray, ref_share: np.ndarray, window: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of the window over the reference's bins (0.1: moderate, 0.25: major shift)."""
    counts = np.bincount(np.searchsorted(edges, window, side="right"), minlength=edges.size + 1)
    p = np.maximum(ref_share, eps)
    q = np.maximum(counts / window.size, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def wasserstein_sorted(ref_sorted: np.ndarray, window: np.ndarray) -> float:
    """Earth mover's distance W1 in the feature's units, via quantile functions at the window's n midpoints
    (error O(1/n); cheap enough to run on every request)."""
    w = np.sort(window)
    u = (np.arange(w.size) + 0.5) / w.size
    q_ref = ref_sorted[np.minimum((u * ref_sorted.size).astype(np.int64), ref_sorted.size - 1)]
    return float(np.mean(np.abs(q_ref - w)))


def class_counts(classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    c = np.asarray(classes).astype(np.int64, copy=False)
    c = c[(c >= 0) & (c < num_classes)]
    return np.bincount(c, minlength=num_classes).astype(np.float64)


def class_shares(counts: np.ndarray) -> dict[str, float]:
    """Class name -> share of the items (all zero for no items), rounded to 6 decimals."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return {CLASS_NAMES[k]: round(float(c / total), 6) if total else 0.0 for k, c in enumerate(counts)}


def chi2_homogeneity(ref_counts: np.ndarray, win_counts: np.ndarray) -> tuple[float, float, float, int]:
    """Chi-squared test of window class counts vs reference counts -> (statistic, p, cramers_v, dof).

    Cells whose expected window count is below 5 are pooled into one cell (and dropped if still empty), so
    sparse or missing classes neither divide by zero nor inflate the statistic. Cramér's V is the
    goodness-of-fit effect size ``sqrt(sum((q - p)^2 / p) / (k - 1))`` of the window proportions ``q`` against
    the reference proportions ``p`` (independent of the window size).
    """
    ref_counts = np.asarray(ref_counts, dtype=np.float64)
    win_counts = np.asarray(win_counts, dtype=np.float64)
    n_ref, n_win = ref_counts.sum(), win_counts.sum()
    if n_ref <= 0 or n_win <= 0:
        return float("nan"), float("nan"), float("nan"), 0
    total = ref_counts + win_counts
    expected_win = total * n_win / (n_ref + n_win)
    keep = expected_win >= MIN_EXPECTED
    ref_cells = ref_counts[keep].copy()
    win_cells = win_counts[keep].copy()
    if (~keep).any() and total[~keep].sum() > 0:
        pooled_ref, pooled_win = ref_counts[~keep].sum(), win_counts[~keep].sum()
        if expected_win[~keep].sum() >= MIN_EXPECTED or not keep.any():
            ref_cells = np.append(ref_cells, pooled_ref)
            win_cells = np.append(win_cells, pooled_win)
        else:  # the pooled cell is still too sparse: fold it into the smallest well-filled cell
            j = int(np.argmin(expected_win[keep]))
            ref_cells[j] += pooled_ref
            win_cells[j] += pooled_win
    table = np.array([ref_cells, win_cells])
    table = table[:, table.sum(axis=0) > 0]
    k = table.shape[1]
    if k < 2:  # everything in one cell: nothing to compare
        return 0.0, 1.0, 0.0, 0
    res = stats.chi2_contingency(table, correction=False)
    p_ref = table[0] / table[0].sum()
    q_win = table[1] / table[1].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        w2 = np.where(p_ref > 0, (q_win - p_ref) ** 2 / p_ref, 0.0).sum()
    return float(res.statistic), float(res.pvalue), float(math.sqrt(w2 / (k - 1))), int(res.dof)


# --- the family ---------------------------------------------------------------------------------------------


def continuous_features(reference: Reference) -> list[str]:
    """Every reference feature except the predicted class, in a stable order."""
    return sorted(k for k in reference.features if k != CLASS_FEATURE)


def window_length(window: dict[str, np.ndarray]) -> int:
    lengths = {int(np.asarray(v).shape[0]) for v in window.values()} if window else {0}
    if len(lengths) != 1:
        raise ValueError(f"window features have different lengths: {sorted(lengths)}")
    return lengths.pop()


def evaluate_drift(
    reference: Reference, window: dict[str, np.ndarray], config: DriftConfig = DriftConfig()
) -> DriftReport:
    """Compare a window of per-item features (from ``item_features``) with the reference; see module doc."""
    n = window_length(window)
    report = DriftReport(
        status=STATUS_INSUFFICIENT,
        window_size=n,
        reference_size=len(reference),
        alpha=config.alpha,
        min_window=config.min_window,
        reference_meta=dict(reference.meta),
        baseline_distribution=class_shares(reference.class_counts()) if CLASS_FEATURE in reference.features else {},
        current_distribution=class_shares(class_counts(window[CLASS_FEATURE])) if CLASS_FEATURE in window else {},
    )
    report.unfamiliar_share, report.unfamiliar_items = unfamiliar_share(window)
    if n < config.min_window or len(reference) < config.min_window:
        return report

    raw: list[tuple[str, str, str, float, float, float, str, dict[str, float]]] = []
    ks_sizes: list[tuple[int, int]] = []
    for feat in continuous_features(reference):
        if feat not in window:
            report.skipped.append(feat)
            continue
        ref_sorted = reference.sorted_feature(feat)
        values = np.asarray(window[feat], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size < config.min_window or ref_sorted.size < config.min_window:
            report.skipped.append(feat)
            continue
        d = ks_statistic_sorted(ref_sorted, values)
        edges, share = reference.cached(("psi", feat), lambda rs=ref_sorted: psi_bins(rs))
        ref_mean = reference.cached(("mean", feat), lambda rs=ref_sorted: float(rs.mean()))
        extra = {
            "wasserstein": wasserstein_sorted(ref_sorted, values),
            "reference_mean": ref_mean,
            "window_mean": float(values.mean()),
        }
        ks_sizes.append((ref_sorted.size, values.size))
        raw.append((f"ks:{feat}", feat, "ks", d, float("nan"), psi(edges, share, values), "psi", extra))
    if raw:  # one vectorised call: scipy's distribution machinery costs ~1 ms a call
        sizes = np.array(ks_sizes, dtype=np.float64)
        pvals = ks_pvalues(np.array([r[3] for r in raw]), sizes[:, 0], sizes[:, 1])
        raw = [(*r[:4], float(p), *r[5:]) for r, p in zip(raw, pvals, strict=True)]

    if CLASS_FEATURE in window and CLASS_FEATURE in reference.features:
        ref_c = reference.class_counts()
        win_c = class_counts(window[CLASS_FEATURE])
        stat, p, v, dof = chi2_homogeneity(ref_c, win_c)
        extra = {"dof": float(dof)}
        raw.append((f"chi2:{CLASS_FEATURE}", CLASS_FEATURE, "chi2", stat, p, v, "cramers_v", extra))
    else:
        report.skipped.append(CLASS_FEATURE)

    m = len(raw)
    for name, feat, test, stat, p, eff, eff_name, extra in raw:
        p_adj = min(1.0, p * m) if math.isfinite(p) else float("nan")
        fired = bool(math.isfinite(p_adj) and p_adj < config.alpha)
        reading = reading_of(feat)
        report.tests.append(TestResult(name, feat, test, stat, p, p_adj, eff, eff_name, fired, extra, reading))
    if not report.tests:
        return report
    report.status = STATUS_DRIFT if report.fired else STATUS_OK
    return report


# The image statistics (monitoring.features.image_features): what the camera, the light and the backdrop do.
PHOTO_FEATURES = {
    "mean_intensity": "the photos are brighter or darker",
    "contrast": "the photos' contrast changed",
    "foreground_share": "items fill more or less of the frame",
    "dark_share": "less (or more) clean backdrop: noise, lighting or a new backdrop",
    "roughness": "the photos are sharper, blurrier or noisier",
}
READING_MIX = "the mix of categories changed (season, supplier): check a sample of predictions; the model may be fine"
READING_PHOTOS = "the photos changed (camera, lighting, backdrop): check the returns desk's set-up"
READING_UNFAMILIAR = "the model meets unfamiliar items: look at the low-confidence ones and label a sample"


def reading_of(feature: str) -> str:
    """What a test of ``feature`` means when it fires, in a person's words."""
    if feature == CLASS_FEATURE:
        return f"The predicted categories are mixed differently: {READING_MIX}."
    if feature in PHOTO_FEATURES:
        return f"{PHOTO_FEATURES[feature][0].upper()}{PHOTO_FEATURES[feature][1:]}: {READING_PHOTOS}."
    if feature.startswith("p_class_") and feature[len("p_class_") :].isdigit():
        name = CLASS_NAMES[int(feature[len("p_class_") :]) % NUM_CLASSES]
        return f"The model's probability of {name} shifted: more or fewer {name} items, or {READING_UNFAMILIAR}."
    return f"The model is surer or less sure than on its validation data: {READING_UNFAMILIAR}."


def drift_reading(fired_features: list[str]) -> str:
    """What a set of fired tests means together ("" when none fired): the README's rule of thumb."""
    if not fired_features:
        return ""
    if any(f in PHOTO_FEATURES for f in fired_features):
        return f"Drift: {READING_PHOTOS}."
    if all(f == CLASS_FEATURE for f in fired_features):
        return f"Drift: {READING_MIX}."
    return f"Drift: {READING_UNFAMILIAR} (the photos themselves look as before)."


def _ks_critical(reference: Reference, n_ref: int, n_win: int, level: float) -> float:
    """Smallest D whose asymptotic p-value is below ``level`` (cached per sizes and level)."""

    def compute() -> float:
        m, n = sorted((float(n_ref), float(n_win)), reverse=True)
        return float(stats.kstwo.isf(level, np.round(m * n / (m + n))))

    return reference.cached(("ks_critical", n_ref, n_win, level), compute)


def drift_verdict(reference: Reference, window: dict[str, np.ndarray], config: DriftConfig = DriftConfig()) -> bool:
    """Only the verdict of :func:`evaluate_drift` (``drift_detected``), computed without p-values or effect
    sizes: each KS statistic is compared with the cached critical value of the Bonferroni level. The same
    decision (up to floating-point ties at the exact boundary), ~5x faster: for the evaluation's simulations."""
    n = window_length(window)
    if n < config.min_window or len(reference) < config.min_window:
        return False
    stats_sizes: list[tuple[float, int, int]] = []
    for feat in continuous_features(reference):
        if feat not in window:
            continue
        ref_sorted = reference.sorted_feature(feat)
        values = np.asarray(window[feat], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size < config.min_window or ref_sorted.size < config.min_window:
            continue
        stats_sizes.append((ks_statistic_sorted(ref_sorted, values), ref_sorted.size, values.size))
    chi2_p = None
    if CLASS_FEATURE in window and CLASS_FEATURE in reference.features:
        chi2_p = chi2_homogeneity(reference.class_counts(), class_counts(window[CLASS_FEATURE]))[1]
    m = len(stats_sizes) + (chi2_p is not None)
    if m == 0:
        return False
    level = config.alpha / m
    if chi2_p is not None and math.isfinite(chi2_p) and chi2_p < level:
        return True
    return any(d > _ks_critical(reference, n_ref, n_win, level) for d, n_ref, n_win in stats_sizes)
