"""POST /labels, the review routes, /performance and the accuracy gauges of /metrics (the real app, in process)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.storage import storage_from_settings
from model_serving.factory import create_app
from monitoring.label_store import LabelStore
from tests.support.api import serving_settings
from tests.support.fakes import FakePredictor
from tests.support.loop import write_night

TOKEN = "review-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _app(**serving):
    settings = serving_settings(**serving)
    return create_app(
        FakePredictor(), settings=settings, background=False, reference_loader=lambda info: None
    ), settings


@pytest.fixture
def loop():
    app, settings = _app(review_token=TOKEN)
    storage = storage_from_settings(settings)
    _, review, audit, _ = write_night(storage)
    return app.test_client(), storage, review, audit


def test_labelling_is_disabled_without_its_own_token_and_refuses_the_admin_token() -> None:
    app, _ = _app(admin_token="admin")
    client = app.test_client()
    assert client.post("/labels", json={"labels": []}).status_code == 404
    assert client.get("/review/queue").status_code == 404
    app, _ = _app(admin_token="admin", review_token=TOKEN)
    client = app.test_client()
    assert client.post("/labels", json={"labels": []}, headers={"Authorization": "Bearer admin"}).status_code == 401
    assert client.get("/review/queue").status_code == 401


def test_post_labels_stores_good_rows_and_refuses_bad_ones_row_by_row(loop) -> None:
    client, storage, review, _ = loop
    rows = [
        {"key": review[0]["key"], "sha256": review[0]["sha256"], "label": "Sandal"},
        {"key": review[1]["key"], "sha256": review[1]["sha256"], "label": "Hat"},
        {"key": "incoming/2026-12-01/nope.png", "sha256": "0" * 64, "label": 3},
    ]
    resp = client.post("/labels", json={"labels": rows, "who": "ann"}, headers=AUTH)
    body = resp.get_json()
    assert resp.status_code == 200 and body["accepted"] == 1
    assert [(r["row"], r["code"]) for r in body["rejected"]] == [(1, "unknown_class"), (2, "unknown_item")]
    [label] = LabelStore(storage).current().values()
    assert (label.label, label.who, label.how) == ("Sandal", "ann", "api")

    resp = client.post("/labels", json={"labels": rows[1:]}, headers=AUTH)
    assert resp.status_code == 422 and resp.get_json()["accepted"] == 0
    assert client.post("/labels", data="not json", headers=AUTH).status_code == 400
    # A retried request (same idempotency key) counts once.
    again = {"labels": rows[:1], "idempotency_key": "press-1"}
    first = client.post("/labels", json=again, headers=AUTH).get_json()
    second = client.post("/labels", json=again, headers=AUTH).get_json()
    assert (first["duplicate"], second["duplicate"], first["submission"]) == (False, True, second["submission"])


def test_queue_photo_and_model_input(loop) -> None:
    client, storage, review, audit = loop
    body = client.get("/review/queue", headers=AUTH).get_json()
    assert body["night"]["name"] == "2026-12-01/20261201T000000000Z-aaaaaa"
    assert [i["source"] for i in body["items"]] == ["review"] * len(review) + ["audit"] * len(audit)
    first = body["items"][0]
    assert len(first["top3"]) == 3 and first["label"] is None
    photo = client.get("/review/photo", query_string={"key": first["key"]}, headers=AUTH)
    assert photo.status_code == 200 and photo.mimetype == "image/png" and photo.data == storage.get_bytes(first["key"])
    seen = client.get("/review/input", query_string={"key": first["key"]}, headers=AUTH)
    assert Image.open(io.BytesIO(seen.data)).size == (28, 28)
    assert client.get("/review/photo", query_string={"key": "processed/train.npz"}, headers=AUTH).status_code == 404


def test_performance_and_metrics_gauges_follow_the_audit_labels(loop) -> None:
    client, _, _, audit = loop
    before = client.get("/performance").get_json()
    assert before["status"] == "unknown" and before["nights"][0]["expected_auto"] == 0.96
    text = client.get("/metrics", headers={"Accept": "text/plain"}).get_data(as_text=True)
    assert 'ric_accuracy_expected{scope="auto_routed"} 0.96' in text
    assert 'ric_accuracy_status{status="unknown"} 1.0' in text
    # Every audit item labelled with the model's own answer: measured 100 %, interval over the validated figure.
    rows = [{"key": r["key"], "sha256": r["sha256"], "label": r["class_name"]} for r in audit]
    assert client.post("/labels", json={"labels": rows}, headers=AUTH).get_json()["accepted"] == len(audit)
    body = client.get("/performance").get_json()
    night = body["nights"][0]
    assert night["audit_labels"] == len(audit) and night["measured_auto"] == 1.0
    assert night["measured_low"] == pytest.approx(0.517, abs=0.001)  # Wilson, continuity-corrected, for 6 of 6
    assert body["status"] == "unknown" and "at least 20" in night["reason"]  # 6 labels are too few to judge
    metrics = client.get("/metrics").get_json()
    assert metrics["accuracy"]["expected_auto"] == 0.96
    assert np.isclose(metrics["accuracy"]["expected_all"], 0.9)
