"""The drift tests: calibration on in-distribution windows, power on shifted ones, the seed's failure modes
(baseline following live data, empty windows, missing classes) impossible, and JSON-ready reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from monitoring.drift import (
    STATUS_DRIFT,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    DriftConfig,
    chi2_homogeneity,
    drift_verdict,
    evaluate_drift,
    ks_pvalue,
    ks_statistic_sorted,
)
from monitoring.drift_evaluation import Trials, draw_from, draw_mixture, evaluate_detector, format_table
from monitoring.reference import Reference
from tests.support.drift import synthetic_features

CONTINUOUS = 15  # confidence, entropy, 10 class probabilities, 3 image statistics


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(synthetic_features(4000, np.random.default_rng(1), sharpness=6.0), meta={"source": "val"})


@pytest.fixture(scope="module")
def live_pool() -> dict[str, np.ndarray]:
    """In-distribution data NOT used for the reference (a different seed)."""
    return synthetic_features(20000, np.random.default_rng(2), sharpness=6.0)


def test_synthetic_features_have_the_real_ones_awkward_ties(reference: Reference) -> None:
    conf = reference.features["confidence"]
    assert 0.05 < np.mean(conf == 1.0) < 0.9  # saturated softmax: a point mass at 1.0
    assert np.unique(reference.features["foreground_share"]).size < 300  # discrete share of 784 pixels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_matches_scipy_even_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = np.round(rng.normal(size=3000), 1)  # heavy ties inside and across samples
    ref[:500] = 1.0
    win = np.round(rng.normal(0.1, 1.0, size=300), 1)
    expected = stats.ks_2samp(ref, win, method="asymp")
    d = ks_statistic_sorted(np.sort(ref), win)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert ks_pvalue(d, ref.size, win.size) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)


def test_in_distribution_windows_rarely_alarm(reference: Reference, live_pool: dict[str, np.ndarray]) -> None:
    """Family-wise false-alarm rate at alpha=5 % over 300 windows: at most 6 % plus sampling slack (2 SE)."""
    config = DriftConfig(alpha=0.05)
    draw = draw_from(live_pool)
    rng = np.random.default_rng(3)
    reports = [evaluate_drift(reference, draw(rng, 500), config) for _ in range(300)]
    assert all(r.status in (STATUS_OK, STATUS_DRIFT) for r in reports)
    assert all(len(r.tests) == CONTINUOUS + 1 for r in reports)
    rate = np.mean([r.drift_detected for r in reports])
    assert rate <= 0.06 + 2 * np.sqrt(0.06 * 0.94 / 300)
    # The individual p-values are calibrated, not just conservative: one KS test alone fires ~5 % of the time
    # at p < 0.05 (ties only make it conservative), and the chi-squared test too.
    p_mean = np.array([t.p_value for r in reports for t in r.tests if t.feature == "mean_intensity"])
    p_chi2 = np.array([t.p_value for r in reports for t in r.tests if t.test == "chi2"])
    assert 0.01 <= np.mean(p_mean < 0.05) <= 0.09
    assert 0.01 <= np.mean(p_chi2 < 0.05) <= 0.09


def test_strong_shifts_are_detected_and_named(reference: Reference) -> None:
    rng = np.random.default_rng(4)
    darker = synthetic_features(500, rng, brightness=-0.05, sharpness=6.0)
    report = evaluate_drift(reference, darker)
    assert report.status == STATUS_DRIFT and report.drift_detected
    assert "ks:mean_intensity" in report.fired and "ks:foreground_share" in report.fired

    three_classes = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    prior = evaluate_drift(reference, synthetic_features(500, rng, class_probs=three_classes, sharpness=6.0))
    assert prior.status == STATUS_DRIFT
    assert "chi2:predicted_class" in prior.fired

    unsure = evaluate_drift(reference, synthetic_features(500, rng, sharpness=2.0))
    assert {"ks:confidence", "ks:entropy"} <= set(unsure.fired)


def test_report_fields_and_json(reference: Reference, live_pool: dict[str, np.ndarray]) -> None:
    report = evaluate_drift(reference, draw_from(live_pool)(np.random.default_rng(5), 300), DriftConfig(alpha=0.01))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["window_size"] == 300 and d["reference_size"] == 4000 and d["alpha"] == 0.01
    assert d["drift_detected"] is (d["status"] == "drift")
    assert d["fired"] == [t["name"] for t in d["tests"] if t["fired"]]
    m = len(d["tests"])
    for t in d["tests"]:
        assert t["test"] in ("ks", "chi2")
        assert t["effect_size_name"] == ("psi" if t["test"] == "ks" else "cramers_v")
        assert t["p_value_adjusted"] == pytest.approx(min(1.0, t["p_value"] * m))
        assert t["fired"] is (t["p_value_adjusted"] < 0.01)
    assert d["reference_meta"] == {"source": "val"}


@pytest.mark.parametrize("n", [0, 1, 99])
def test_small_windows_are_insufficient_data(reference: Reference, live_pool: dict[str, np.ndarray], n: int) -> None:
    window = {k: v[:n] for k, v in live_pool.items()}
    report = evaluate_drift(reference, window, DriftConfig(min_window=100))
    assert report.status == STATUS_INSUFFICIENT
    assert report.tests == [] and not report.drift_detected
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["window_size"] == n


def test_empty_dict_window_is_insufficient_data(reference: Reference) -> None:
    assert evaluate_drift(reference, {}).status == STATUS_INSUFFICIENT


def test_ragged_window_is_rejected(reference: Reference) -> None:
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_drift(reference, {"confidence": np.ones(200), "entropy": np.ones(150)})


def test_missing_classes_neither_divide_by_zero_nor_fire_on_nan(reference: Reference) -> None:
    rng = np.random.default_rng(6)
    window = synthetic_features(200, rng, sharpness=6.0)
    window["predicted_class"] = np.full(200, 3)  # one class only: 9 empty cells
    report = evaluate_drift(reference, window)
    chi2 = next(t for t in report.tests if t.test == "chi2")
    assert np.isfinite(chi2.statistic) and np.isfinite(chi2.p_value) and chi2.fired

    # A class the reference never predicted (zero expected count) appears in the window.
    ref_feats = dict(reference.features)
    ref_feats["predicted_class"] = np.where(ref_feats["predicted_class"] == 9, 0, ref_feats["predicted_class"])
    no_nine = Reference(ref_feats)
    window = synthetic_features(300, rng, sharpness=6.0)
    window["predicted_class"][:2] = 9
    chi2 = next(t for t in evaluate_drift(no_nine, window).tests if t.test == "chi2")
    assert np.isfinite(chi2.p_value) and 0.0 <= chi2.p_value <= 1.0


def test_chi2_pools_sparse_cells() -> None:
    ref = np.array([1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 3, 0], dtype=float)
    win = np.array([10, 11, 9, 10, 12, 8, 10, 10, 0, 0], dtype=float)
    _, p, v, dof = chi2_homogeneity(ref, win)
    assert dof == 7  # 8 well-filled cells (the 2 rare classes, still sparse when pooled, folded in), minus one
    assert p > 0.5 and v < 0.2
    assert math.isnan(chi2_homogeneity(ref, np.zeros(10))[1])  # an empty window: undefined, never "fired"


def test_nan_values_are_dropped_and_all_nan_feature_skipped(reference: Reference) -> None:
    window = synthetic_features(300, np.random.default_rng(7), sharpness=6.0)
    window["contrast"] = window["contrast"].astype(np.float64)
    window["contrast"][:10] = np.nan
    window["entropy"] = np.full(300, np.nan)
    report = evaluate_drift(reference, window)
    assert "entropy" in report.skipped
    assert all(t.feature != "entropy" for t in report.tests)
    contrast = next(t for t in report.tests if t.feature == "contrast")
    assert np.isfinite(contrast.p_value)
    json.dumps(report.to_dict(), allow_nan=False)


def test_reference_is_never_changed_by_live_data(live_pool: dict[str, np.ndarray]) -> None:
    source = synthetic_features(3000, np.random.default_rng(8), sharpness=6.0)
    ref = Reference(source)
    before = {k: v.copy() for k, v in ref.features.items()}
    rng = np.random.default_rng(9)
    draw = draw_from(live_pool)
    for i in range(40):
        window = draw(rng, 400) if i % 2 else synthetic_features(400, rng, brightness=0.2)
        evaluate_drift(ref, window)
    # The caller's own arrays are not shared with the reference...
    source["confidence"][:] = 0.0
    assert len(ref) == 3000
    for k, v in before.items():
        np.testing.assert_array_equal(ref.features[k], v)
    # ...and the reference's arrays and mapping refuse writes.
    with pytest.raises(ValueError):
        ref.features["confidence"][0] = 0.5
    with pytest.raises(TypeError):
        ref.features["confidence"] = np.zeros(3000)  # type: ignore[index]
    with pytest.raises(AttributeError):
        ref.features = {}  # type: ignore[misc]
    assert not Reference.from_bytes(ref.to_bytes()).features["entropy"].flags.writeable


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DriftConfig(alpha=0.0)
    with pytest.raises(ValueError):
        DriftConfig(min_window=600, window_size=500)


def test_evaluate_detector_measures_rates_and_min_window(
    reference: Reference, live_pool: dict[str, np.ndarray]
) -> None:
    rng = np.random.default_rng(10)
    dark = synthetic_features(5000, rng, brightness=-0.03, sharpness=6.0)
    ood = synthetic_features(5000, rng, sharpness=1.0)
    config = DriftConfig(window_size=300, min_window=50)
    ev = evaluate_detector(
        reference,
        draw_from(live_pool),
        {"dark": ("darker", draw_from(dark)), "ood": ("30 % unsure", draw_mixture(live_pool, ood, 0.3))},
        config=config,
        trials=Trials(sizes=(50, 100, 300), null_windows=60, power_windows=40, seed=0),
    )
    assert ev.false_alarm_rate <= 0.1
    assert set(ev.false_alarm_by_size) == {50, 100, 300}
    dark_result = ev.shifts[0]
    assert dark_result.power == 1.0 and dark_result.min_window is not None and dark_result.min_window <= 300
    assert ev.shifts[1].power >= 0.9
    table = format_table(ev)
    assert "darker" in table and "false-alarm rate at n=300" in table
    again = evaluate_detector(
        reference,
        draw_from(live_pool),
        {"dark": ("darker", draw_from(dark))},
        config=config,
        trials=Trials(sizes=(50, 100, 300), null_windows=60, power_windows=40, seed=0),
    )
    assert again.shifts[0].power_by_size == dark_result.power_by_size  # seeded: repeatable
    assert again.false_alarm_by_size == ev.false_alarm_by_size


def test_fast_verdict_agrees_with_the_full_report(reference: Reference, live_pool: dict[str, np.ndarray]) -> None:
    """The evaluation's simulations use drift_verdict; it must decide exactly like evaluate_drift."""
    rng = np.random.default_rng(11)
    config = DriftConfig(min_window=30)
    windows = [draw_from(live_pool)(rng, n) for n in (10, 30, 100, 300) for _ in range(15)]
    windows += [synthetic_features(n, rng, brightness=b, sharpness=6.0) for n in (40, 200) for b in (0.01, 0.02)]
    verdicts = [drift_verdict(reference, w, config) for w in windows]
    assert verdicts == [evaluate_drift(reference, w, config).drift_detected for w in windows]
    assert any(verdicts) and not all(verdicts)  # both outcomes exercised


def test_fired_tests_carry_their_plain_language_reading() -> None:
    # The README's reading of a drift verdict, given with the verdict itself (the dashboard showed only numbers).
    from monitoring.drift import (
        PHOTO_FEATURES,
        READING_MIX,
        READING_PHOTOS,
        READING_UNFAMILIAR,
        drift_reading,
        reading_of,
    )

    assert drift_reading([]) == ""
    assert drift_reading(["predicted_class"]) == f"Drift: {READING_MIX}."
    assert drift_reading(["predicted_class", "p_class_3", "roughness"]) == f"Drift: {READING_PHOTOS}."
    assert drift_reading(["confidence", "p_class_8"]).startswith(f"Drift: {READING_UNFAMILIAR}")
    assert "Bag" in reading_of("p_class_8") and READING_PHOTOS in reading_of("dark_share")
    assert all(reading_of(f) for f in [*PHOTO_FEATURES, "confidence", "entropy", "predicted_class"])
