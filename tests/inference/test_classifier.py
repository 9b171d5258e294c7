"""The one call from bytes to answer (inference.classifier), on real PNG/JPEG bytes and the session's tiny champion
(a real exported model that computes the unfamiliarity score and carries its threshold, as a trained one does)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

import data_processing.preprocessing as pp
import inference.predictor
from common.images import encode_png
from data_processing.preprocessing import DecodeBudget, preprocess_bytes
from inference import classifier as clf
from inference.classifier import Classifier, ColumnAnswer, Refusal, Refused, Thresholds, prepare_item
from inference.loading import load_predictor
from inference.records import describe
from tests.support.models import MODEL_NAME, make_tiny_images


@pytest.fixture(scope="module")
def champion(_batch_champion_store):
    """The session's tiny champion, served by its exported runtime."""
    db, _ = _batch_champion_store
    return load_predictor(f"models:/{MODEL_NAME}@champion", f"sqlite:///{db}", runtime="exported")


class Upload:
    """What werkzeug hands the route: ``read()`` once, and the client's file name."""

    def __init__(self, data: bytes, filename: str | None) -> None:
        self.data, self.filename, self.reads = data, filename, 0

    def read(self) -> bytes:
        self.reads += 1
        return self.data


def _photos(n: int) -> list[bytes]:
    """``n`` small real images: PNGs of generated items, every third one a JPEG."""
    out = []
    for i, img in enumerate(make_tiny_images(n, seed=5)[0]):
        if i % 3 == 2:
            buf = io.BytesIO()
            Image.fromarray(img, mode="L").resize((56, 56)).save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
        else:
            out.append(encode_png(img))
    return out


def test_classify_answers_what_the_preprocessing_and_the_predictor_say_with_the_api_fields(champion):
    photos = _photos(6)
    thresholds = Thresholds.of(champion.info)
    assert thresholds.unfamiliar is not None  # the champion carries its own threshold
    uploads = [Upload(p, f"item-{i}.png") for i, p in enumerate(photos[:3])] + photos[3:]  # uploads and plain bytes
    answer = Classifier(champion, thresholds).classify(uploads, DecodeBudget(max_seconds=30))

    images = np.stack([preprocess_bytes(p) for p in photos])
    np.testing.assert_array_equal(answer.images, images)
    scores = champion.predict(images)
    want = describe(
        scores.probs,
        review_threshold=thresholds.review,
        unfamiliarity=scores.unfamiliarity,
        unfamiliar_threshold=thresholds.unfamiliar,
    )
    assert len(answer.records) == 6 and all(u.reads == 1 for u in uploads[:3])
    for i, (got, expected) in enumerate(zip(answer.records, want, strict=True)):
        assert got["filename"] == (f"item-{i}.png" if i < 3 else None)
        assert got["predicted_class"] == got["class_id"]  # the seed API's field
        assert {k: v for k, v in got.items() if k not in ("filename", "predicted_class")} == expected
    assert answer.needs_review == sum(r["needs_review"] for r in want)
    assert np.all(np.isfinite(answer.unfamiliar))  # this version is judged for unfamiliarity, item by item
    np.testing.assert_array_equal(answer.unfamiliar, [float(r["unfamiliar"]) for r in want])


def test_each_image_meets_the_preprocessing_once(champion, monkeypatch):
    calls = {"bytes": 0, "batch": 0, "predictor": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(clf, "preprocess_bytes", counting("bytes", pp.preprocess_bytes))
    monkeypatch.setattr(clf, "to_model_batch", counting("batch", pp.to_model_batch))
    monkeypatch.setattr(inference.predictor, "to_model_batch", counting("predictor", pp.to_model_batch))
    answer = Classifier(champion, Thresholds.of(champion.info)).classify(_photos(4), DecodeBudget())
    assert len(answer.records) == 4
    # Bytes -> model image once per image, the batch -> model input once; the predictor only runs it.
    assert calls == {"bytes": 4, "batch": 1, "predictor": 0}


def test_a_refused_image_names_itself_and_nothing_is_scored(champion, monkeypatch):
    ran = []
    monkeypatch.setattr(champion, "predict_batch", lambda batch: ran.append(batch))
    service = Classifier(champion, Thresholds.of(champion.info))
    photos = _photos(2)
    with pytest.raises(Refused) as one:
        service.classify([Upload(b"GIF89a not really", "x.gif")], DecodeBudget())
    assert (one.value.status, one.value.code) == (415, "unsupported_format")
    assert one.value.message.startswith("'x.gif': ")
    with pytest.raises(Refused) as second:
        service.classify([photos[0], Upload(photos[1][:40], "half.png")], DecodeBudget())
    assert second.value.code == "invalid_image" and second.value.message.startswith("file 1 ('half.png'): ")
    with pytest.raises(Refused) as budget:  # the request's budget is shared by its images
        service.classify(photos, DecodeBudget(max_total_pixels=28 * 28 + 1))
    assert (budget.value.status, budget.value.code) == (413, "pixel_budget_exceeded")
    assert budget.value.message.startswith("file 1 (None): ")
    assert ran == []


def test_the_nights_twin_prepares_in_a_picklable_step_and_answers_the_records_column_by_column(champion):
    photos = _photos(5)
    prepared = [pickle.loads(pickle.dumps(prepare_item(p))) for p in [*photos, b"\x89PNG\r\n\x1a\n broken"]]
    assert isinstance(prepared[-1], Refusal) and prepared[-1].code == "invalid_image"
    assert pickle.loads(pickle.dumps(prepare_item))(photos[0]).shape == (28, 28)  # runs in spawned workers
    images = np.stack(prepared[:-1])
    service = Classifier(champion, Thresholds.of(champion.info))
    columns = service.classify_columns(images)
    records = service.classify(photos, DecodeBudget()).records
    assert isinstance(columns, ColumnAnswer) and len(columns) == 5
    for i, record in enumerate(records):
        for name in ("class_id", "class_name", "confidence", "unfamiliarity", "unfamiliar", "needs_review"):
            assert columns.columns[name][i] == record[name], name
        assert columns.columns["review_reason"][i] == record["review_reason"]
        assert json.loads(columns.columns["top3"][i]) == record["top3"]
    empty = service.classify_columns(np.zeros((0, 28, 28), dtype=np.uint8))
    assert len(empty) == 0 and empty.columns["class_id"] == []


def test_thresholds_follow_the_operator_then_the_version():
    from tests.support.fakes import ScoringFakePredictor

    info = ScoringFakePredictor(unfamiliar_threshold=5.0).info
    assert Thresholds.of(info) == Thresholds(0.7, 5.0)
    assert Thresholds.of(info, 0.9, 1.5) == Thresholds(0.9, 1.5)
    assert Thresholds.of(None) == Thresholds(0.7, None)
    unjudged = Thresholds(0.7, None).flags([{"unfamiliarity": 3.0, "unfamiliar": False}])
    judged = Thresholds(0.7, 2.0).flags([{"unfamiliarity": 3.0, "unfamiliar": True}, {"unfamiliarity": None}])
    assert np.isnan(unjudged).all() and judged[0] == 1.0 and np.isnan(judged[1])
