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
