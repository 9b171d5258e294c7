"""Things that are not one of the 10 classes: their photos (data_processing.unfamiliar_photos), the scores that
tell them apart (inference.unfamiliarity) and the benchmark's bookkeeping (model_training.unfamiliar_bench)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_processing.preprocessing import preprocess_bytes
from data_processing.unfamiliar_photos import KINDS, render_unfamiliar
from inference.unfamiliarity import (
    SCORES,
    all_scores,
    auroc,
    fit_gaussians,
    score_flops,
    threshold_at_share,
)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_a_seeded_photo_the_preprocessing_accepts(kind: str) -> None:
    a, b = render_unfamiliar(kind, (3, 21, 0, 5)), render_unfamiliar(kind, (3, 21, 0, 5))
    assert a.data == b.data and a.kind == kind and a.detail
    assert render_unfamiliar(kind, (3, 21, 0, 6)).data != a.data
    with Image.open(io.BytesIO(a.data)) as img:
        assert img.format == "JPEG" and 300 <= max(img.size) <= 4700  # the photo renderers: up to 12 MP
    assert preprocess_bytes(a.data).shape == (28, 28)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        render_unfamiliar("mug", 1)


def test_mahalanobis_scores_are_the_textbook_distances() -> None:
    rng = np.random.default_rng(0)
    d, k = 6, 3
    means = rng.normal(0, 3, (k, d))
    mix = rng.normal(0, 1, (d, d))
    labels = rng.integers(0, k, 3000)
    feats = means[labels] + rng.normal(0, 1, (3000, d)) @ mix
    fit = fit_gaussians(feats, labels)
    probe = rng.normal(0, 3, (5, d))
    emp_means = np.stack([feats[labels == c].mean(axis=0) for c in range(k)])
    centred = feats - emp_means[labels]
    cov = centred.T @ centred / (len(feats) - 1)
    cov += 1e-3 * np.trace(cov) / d * np.eye(d) + 1e-9 * np.eye(d)
    prec = np.linalg.inv(cov)
    expected = np.min([np.einsum("nd,de,ne->n", probe - m, prec, probe - m) for m in emp_means], axis=0)
    scores = all_scores(probe, np.zeros((5, k)), fit)
    np.testing.assert_allclose(scores["mahalanobis"], expected, rtol=1e-6)
    assert set(scores) == set(SCORES)


def test_energy_and_msp_grow_as_the_logits_flatten() -> None:
    logits = np.array([[9.0, 0.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    fit = fit_gaussians(np.random.default_rng(1).normal(size=(30, 2)), np.repeat([0, 1, 2], 10))
    s = all_scores(np.zeros((3, 2)), logits, fit)
    assert np.all(np.diff(s["msp"]) > 0) and np.all(np.diff(s["energy"]) > 0)
    assert s["msp"][2] == pytest.approx(2 / 3)


def test_threshold_flags_the_share_and_auroc_is_a_ranking() -> None:
    inside = np.arange(1000, dtype=float)
    t = threshold_at_share(inside, 0.05)
    assert np.mean(inside > t) == pytest.approx(0.05, abs=0.002)
    assert auroc(inside, inside + 2000) == 1.0 and auroc(inside + 2000, inside) == 0.0
    assert auroc(inside, inside.copy()) == pytest.approx(0.5)


def test_the_recommended_score_fits_the_budget() -> None:
    # Issue 27: the served model (36.3 MFLOPs) plus unfamiliarity within 45 MFLOPs.
    assert 36.3e6 + score_flops("mahalanobis", 192) <= 45e6
    assert score_flops("energy", 192) < score_flops("mahalanobis", 192) < score_flops("relative_mahalanobis", 192)


def test_evaluate_scores_reports_per_kind() -> None:
    from model_training.unfamiliar_bench import evaluate_scores

    rng = np.random.default_rng(2)
    in_val = {"s": rng.normal(0, 1, 2000)}
    in_sets = {"test": {"s": rng.normal(0, 1, 1000)}}
    kinds = np.array(["far"] * 100 + ["near"] * 100)
    ood = {"s": np.concatenate([rng.normal(10, 1, 100), rng.normal(0, 1, 100)])}
    (report,) = evaluate_scores(in_val, in_sets, ood, kinds, share=0.05)
    assert report.caught["far"] == 1.0 and report.caught["near"] < 0.15
    assert report.auroc["far"] > 0.99 and 0.4 < report.auroc["near"] < 0.6
    assert report.flagged["test"] == pytest.approx(0.05, abs=0.02)


def test_the_combined_score_sums_its_standardised_parts() -> None:
    from inference.unfamiliarity import COMBINED, fit_standardiser, with_combined

    reference = {"relative_mahalanobis": np.array([0.0, 1.0, 2.0, 3.0, 4.0]), "energy": np.array([10.0] * 4 + [12.0])}
    std = fit_standardiser(reference)
    assert std["relative_mahalanobis"] == pytest.approx((2.0, 1.4826))
    out = with_combined({"relative_mahalanobis": np.array([2.0, 5.0]), "energy": np.array([10.0, 10.0])}, std)
    assert out[COMBINED][0] == pytest.approx(0.0) and out[COMBINED][1] == pytest.approx(3 / 1.4826)
    assert score_flops(COMBINED, 192) == score_flops("relative_mahalanobis", 192) + score_flops("energy", 192) + 4


# --- the score inside the served model and every exported runtime ------------------------------------------------


@pytest.fixture(scope="module")
def scored():
    """A tiny served model computing the score (tests.support.models.scored_cnn), its items and unfamiliar images."""
    from tests.support.models import make_tiny_images, scored_cnn, unfamiliar_images

    images, labels = make_tiny_images(256)
    model, threshold, stats = scored_cnn(images, labels)
    return model, threshold, stats, images, labels, unfamiliar_images(64)


def test_the_served_model_computes_the_combined_score_numpy_computes(scored) -> None:
    from data_processing.preprocessing import to_model_batch
    from inference.unfamiliarity import FeatureExtractor, combined_scores, has_unfamiliarity

    model, threshold, stats, images, _, odd = scored
    both = np.concatenate([images[:64], odd])
    out = model.predict(to_model_batch(both), verbose=0)
    feats, logits = FeatureExtractor(model)(both)
    want = combined_scores(feats, logits, stats)
    assert out.shape == (128, 11) and has_unfamiliarity(model)
    np.testing.assert_allclose(out[:, 10], want, rtol=1e-3, atol=1e-3 * (1 + np.abs(want).max() / 100))
    np.testing.assert_allclose(out[:, :10].sum(axis=1), 1.0, atol=1e-5)  # the probabilities are untouched
    assert np.mean(out[64:, 10] > threshold) == 1.0 and np.mean(out[:64, 10] > threshold) < 0.15


def test_every_runtime_exports_the_score_with_parity_and_serves_it(scored, tmp_path) -> None:
    from data_processing.preprocessing import to_model_batch
    from inference.exporting import MIN_AGREEMENT, ExportPlan, export_runtime
    from inference.loading import predictor_from_directory
    from inference.runtimes import KerasGraphRuntime
    from inference.versions import ModelInfo

    model, threshold, _, images, labels, odd = scored
    splits = {"val": (images[:128], labels[:128]), "test": (images[128:], labels[128:]), "unfamiliar": (odd, None)}
    result = export_runtime(model, splits, tmp_path, plan=ExportPlan(unfamiliar_threshold=threshold))
    assert result.passed == ["litert-int8", "onnx", "litert"], [t.reason for t in result.tried]
    assert result.manifest["unfamiliarity"] is True and result.manifest["unfamiliar_threshold"] == threshold
    for parity in result.tried:
        assert parity.unfamiliar_agreement >= MIN_AGREEMENT and "unfamiliar on" in parity.reason
    assert "runtime_unfamiliar_agreement" in result.metrics()
    both = np.concatenate([images[:32], odd[:32]])
    want = KerasGraphRuntime(model).run(to_model_batch(both))
    info = ModelInfo("refund-item-classifier", "1", None, None, "test://", unfamiliar_threshold=threshold)
    for kind in result.passed:
        predictor = predictor_from_directory(tmp_path, info, kind=kind)  # its probe, scores included, re-checked
        predictor.warm_up()
        scores = predictor.predict(both)
        assert predictor.unfamiliarity is True and scores.probs.shape == (64, 10)
        assert np.mean((scores.unfamiliarity > threshold) == (want[:, 10] > threshold)) >= MIN_AGREEMENT, kind
        assert predictor.predict_proba(both).shape == (64, 10)  # what callers of the probabilities get


def test_parity_fails_when_a_runtime_moves_the_score_across_the_threshold() -> None:
    from inference.exporting import check_parity

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(10), 400).astype(np.float32)
    score = rng.normal(0, 1, (400, 1)).astype(np.float32)
    ref = {"val": np.hstack([probs, score])}
    labels = {"val": probs.argmax(axis=1)}
    assert check_parity("x", ref, ref, labels, unfamiliar_threshold=1.0).passed
    moved = {"val": np.hstack([probs, score + 0.5])}  # same classes, the score shifted by half a unit
    parity = check_parity("x", ref, moved, labels, unfamiliar_threshold=1.0)
    assert not parity.passed and "called unfamiliar agree" in parity.reason
    assert parity.argmax_agreement == 1.0 and parity.unfamiliarity_max_diff == pytest.approx(0.5)
    # Another score whose flags agree only because the threshold is far out (a quantized quadratic form) fails too
    scaled = {"val": np.hstack([probs, score * 3])}
    parity = check_parity("x", ref, scaled, labels, unfamiliar_threshold=50.0)
    assert parity.unfamiliar_agreement == 1.0 and not parity.passed and "standard units off" in parity.reason


def test_records_give_the_reason_unfamiliar_first_and_the_column_form_agrees() -> None:
    import json

    from inference.records import describe, describe_columns

    probs = np.full((4, 10), 0.02)
    probs[:, 0] = [0.82, 0.82, 0.3, 0.3]
    probs /= probs.sum(axis=1, keepdims=True)
    unfamiliarity = np.array([9.0, 0.1, 9.0, np.nan])
    records = describe(probs, review_threshold=0.7, unfamiliarity=unfamiliarity, unfamiliar_threshold=2.0)
    assert [r["review_reason"] for r in records] == ["unfamiliar", None, "unfamiliar", "low_confidence"]
    assert [r["unfamiliar"] for r in records] == [True, False, True, False]
    assert [r["needs_review"] for r in records] == [True, False, True, True]
    assert records[3]["unfamiliarity"] is None  # NaN: not computed
    cols = describe_columns(probs, 0.7, unfamiliarity=unfamiliarity, unfamiliar_threshold=2.0)
    for i, rec in enumerate(records):
        assert {k: cols[k][i] for k in cols if k != "top3"} == {k: v for k, v in rec.items() if k != "top3"}
        assert json.loads(cols["top3"][i]) == rec["top3"]
    plain = describe(probs, review_threshold=0.7)  # a version without the score
    assert [r["review_reason"] for r in plain] == [None, None, "low_confidence", "low_confidence"]
    assert not any(r["unfamiliar"] for r in plain) and all(r["unfamiliarity"] is None for r in plain)


def test_the_threshold_in_force_and_the_version_tag() -> None:
    from inference.records import unfamiliar_threshold_for
    from inference.versions import ModelInfo, _score_tag

    info = ModelInfo("m", "1", None, None, "x://", unfamiliar_threshold=2.5)
    assert unfamiliar_threshold_for(None, info) == 2.5 and unfamiliar_threshold_for(4.0, info) == 4.0
    assert unfamiliar_threshold_for(None, ModelInfo("m", "1", None, None, "x://")) is None
    assert _score_tag("3.25") == 3.25 and _score_tag("-1") == -1.0
    assert _score_tag("nan") is None and _score_tag("inf") is None and _score_tag("x") is None
