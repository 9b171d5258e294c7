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


# --- outlier exposure: the head on top of the combined score's parts ---------------------------------------------


def _correlated(n: int, shift: tuple[float, float], seed: int) -> np.ndarray:
    """Rows ``[feature, part]`` from a Gaussian with correlation 0.95, moved by ``shift``."""
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    return np.random.default_rng(seed).multivariate_normal(shift, cov, n)


def test_the_heads_penalty_is_chosen_on_the_validation_pair() -> None:
    from inference.unfamiliarity import choose_head

    # Unfamiliar rows lie along (1, 0.5) from the others, with the two inputs correlated: a weak penalty learns the
    # discriminant (the covariance undone), a strong one the plain difference of the means. Validation rows drawn
    # like the fitting rows want the first; validation rows moved along (1, 1) instead want the second.
    fit_pair = (_correlated(400, (0, 0), 1), _correlated(400, (1.0, 0.5), 2))
    same = (_correlated(400, (0, 0), 3), _correlated(400, (1.0, 0.5), 4))
    other = (_correlated(400, (0, 0), 5), _correlated(400, (1.5, 1.5), 6))
    grid = (1e-4, 10.0)
    a, b = choose_head(fit_pair, same, dims=1, grid=grid), choose_head(fit_pair, other, dims=1, grid=grid)
    assert a.head.l2 == 1e-4 and b.head.l2 == 10.0
    assert a.tried[1e-4] > a.tried[10.0] and b.tried[10.0] > b.tried[1e-4]
    s_in, s_out = (a.head.logit(v[:, :1], v[:, 1:]) for v in fit_pair)
    assert auroc(s_in, s_out) > 0.85  # it separates what it was fitted on


def test_leave_one_kind_out_fits_without_the_kind() -> None:
    from model_training.unfamiliar_bench import HeadData, fit_head, leave_one_kind_out

    rng = np.random.default_rng(7)

    def rows(n: int, moved: int | None) -> np.ndarray:
        x = rng.normal(0, 1, (n, 4))  # 2 features, 2 parts
        if moved is not None:
            x[:, moved] += 6.0
        return x

    kinds = np.array(["a"] * 200 + ["b"] * 200)
    data = HeadData(rows(400, None), np.concatenate([rows(200, 0), rows(200, 1)]), kinds,
                    rows(400, None), np.concatenate([rows(200, 0), rows(200, 1)]), kinds)  # fmt: skip
    assert set(data.without("b").fit_out_kinds) == {"a"} and len(data.without("b").val_out) == 200
    heads = leave_one_kind_out(data, dims=2)
    both = fit_head(data, dims=2).head
    b_test = rows(200, 1)
    caught = {}
    for name, head in (("both", both), ("without b", heads["b"])):
        t = threshold_at_share(head.logit(data.val_in[:, :2], data.val_in[:, 2:]), 0.05)
        caught[name] = float(np.mean(head.logit(b_test[:, :2], b_test[:, 2:]) > t))
    # Kind b is told apart by the second feature alone: the head that never saw b hardly weighs it
    assert abs(heads["b"].feature_weights[1]) < 0.2 * abs(heads["b"].feature_weights[0])
    assert caught["both"] > 0.9 and caught["without b"] < 0.5


@pytest.fixture(scope="module")
def with_head(scored):
    """The tiny served model's network with a head fitted on its items against checkerboards and noise."""
    from inference.unfamiliarity import FeatureExtractor, choose_head, head_rows, network_of, with_unfamiliarity
    from tests.support.models import make_tiny_images

    model, _, stats, images, _, odd = scored
    network = network_of(model)
    extract = FeatureExtractor(network)
    noise = np.random.default_rng(8).integers(0, 256, (64, 28, 28)).astype(np.uint8)
    fit_in, val_in = make_tiny_images(512, seed=201)[0], make_tiny_images(256, seed=202)[0]
    rows = {k: head_rows(*extract(x), stats) for k, x in
            (("fit_in", fit_in), ("fit_out", np.concatenate([odd[:32], noise[:32]])), ("val_in", val_in),
             ("val_out", np.concatenate([odd[32:], noise[32:]])))}  # fmt: skip
    choice = choose_head((rows["fit_in"], rows["fit_out"]), (rows["val_in"], rows["val_out"]), dims=144)
    headed = stats.with_head(choice.head)
    return with_unfamiliarity(network, headed), headed, images, np.concatenate([odd, noise])


def test_the_served_model_computes_the_heads_logit_numpy_computes(with_head) -> None:
    from data_processing.preprocessing import to_model_batch
    from inference.unfamiliarity import QUANTIZED_FROM, SCORE_LAYER, FeatureExtractor, served_scores

    model, stats, images, odd = with_head
    both = np.concatenate([images[:64], odd])
    out = model.predict(to_model_batch(both), verbose=0)
    feats, logits = FeatureExtractor(model)(both)
    want = served_scores(feats, logits, stats)  # float64
    assert not np.allclose(want, served_scores(feats, logits, stats.with_head(None)))  # the head changes the score
    np.testing.assert_allclose(out[:, 10], want, rtol=1e-3, atol=1e-3 * (1 + np.abs(want).max() / 100))
    kernel = model.get_layer(SCORE_LAYER).get_weights()[0]
    assert kernel.shape == (144 + 10 + 1 + 144, 1) and kernel.size < QUANTIZED_FROM  # stays float32 in int8 LiteRT
    assert auroc(want[:64], want[64:]) > 0.95


def test_a_model_without_a_head_is_built_and_loads_as_before(scored, tmp_path) -> None:
    import keras

    from data_processing.preprocessing import to_model_batch
    from inference.unfamiliarity import SCORE_LAYER, combined_scores, served_scores

    model, _, stats, images, _, odd = scored
    assert stats.head is None
    # the final layer reads the quadratic terms, the logsumexp columns and the nearest class: no features
    assert model.get_layer(SCORE_LAYER).get_weights()[0].shape == (144 + 10 + 1, 1)
    path = tmp_path / "no-head.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    both = to_model_batch(np.concatenate([images[:16], odd[:16]]))
    np.testing.assert_allclose(loaded.predict(both, verbose=0), model.predict(both, verbose=0), rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(9)
    feats, logits = rng.normal(0, 1, (8, 144)), rng.normal(0, 3, (8, 10))
    np.testing.assert_array_equal(served_scores(feats, logits, stats), combined_scores(feats, logits, stats))


def test_every_runtime_exports_the_heads_score_with_parity(with_head, tmp_path) -> None:
    from data_processing.preprocessing import to_model_batch
    from inference.exporting import MIN_AGREEMENT, ExportPlan, export_runtime
    from tests.support.models import make_tiny_images

    model, _, _, odd = with_head
    held_out, labels = make_tiny_images(256, seed=203)
    threshold = threshold_at_share(model.predict(to_model_batch(held_out), verbose=0)[:, 10], 0.05)
    splits = {"val": (held_out[:128], labels[:128]), "test": (held_out[128:], labels[128:]), "unfamiliar": (odd, None)}
    result = export_runtime(model, splits, tmp_path, plan=ExportPlan(unfamiliar_threshold=threshold))
    assert "litert-int8" in result.passed, [t.reason for t in result.tried]  # the head's weights stay float32
    for parity in result.tried:
        assert parity.unfamiliar_agreement >= MIN_AGREEMENT, parity.reason
