"""The shared fixtures themselves: the tiny champion loads through its exported runtime, with its reference."""

from __future__ import annotations

import numpy as np

from inference.loading import load_predictor
from inference.records import describe
from monitoring.reference import load_reference_for_version


def test_tiny_champion_loads_through_alias_with_its_reference(tiny_champion, settings):
    predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri)
    assert predictor.info.version == str(tiny_champion.version)
    assert predictor.runtime_name != "keras-graph" and predictor.fallback_reason is None
    assert predictor.info.alias == "champion"
    probs = predictor.predict_proba(np.zeros((3, 28, 28), dtype=np.uint8))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    records = describe(probs, review_threshold=1.01)
    assert all(r["needs_review"] for r in records) and len(records[0]["top3"]) == 3
    ref = load_reference_for_version("refund-item-classifier", tiny_champion.version, settings.mlflow_tracking_uri)
    assert len(ref) == 128 and "confidence" in ref.features and "mean_intensity" in ref.features
