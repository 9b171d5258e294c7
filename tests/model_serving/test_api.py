"""The API contract through Flask's test client, with a hand-written fake model (no TensorFlow)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.labels import CLASS_NAMES
from model_serving.factory import create_app
from monitoring.features import item_features
from monitoring.reference import Reference
from tests.support.api import bad_upload_corpus, encode, item_image, serving_settings
from tests.support.fakes import FakePredictor


def make_app(predictor=None, **serving):
    reference = Reference(features=item_features(np.stack([item_image(v) for v in range(150, 250)]), _probs(100)))
    return create_app(
        predictor or FakePredictor(),
        settings=serving_settings(**{"drift_min_window": 20, "drift_window_size": 50, **serving}),
        background=False,
        reference_loader=lambda info: reference,
    )


def _probs(n: int) -> np.ndarray:
    p = np.full((n, 10), 0.1 / 9, dtype=np.float32)
    p[np.arange(n), np.arange(n) % 10] = 0.9
    return p


@pytest.fixture
def client():
    return make_app().test_client()


def post(client, *files, field="file"):
    data = {field: [(io.BytesIO(b), name) for b, name in files]}
    return client.post("/predict", data=data, content_type="multipart/form-data")


def metrics(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.get_json()


def test_single_file_returns_one_record_with_model_and_timing(client):
    r = post(client, (encode(item_image(230)), "shirt.png"))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["class_id"] == 230 // 26 and body["class_name"] == CLASS_NAMES[230 // 26]
    assert body["confidence"] == pytest.approx(0.9)
    assert body["top3"][0]["class_id"] == body["class_id"] and len(body["top3"]) == 3
    assert body["needs_review"] is False
    assert body["filename"] == "shirt.png"
    assert body["model_name"] == "refund-item-classifier" and body["model_version"] == "7"
    assert body["processing_ms"] > 0


def test_needs_review_follows_the_threshold(client):
    dim = post(client, (encode(item_image(150)), "dim.png")).get_json()
    assert dim["confidence"] == pytest.approx(0.5) and dim["needs_review"] is True


def test_review_threshold_is_configurable(monkeypatch):
    monkeypatch.setenv("REVIEW_THRESHOLD", "0.4")
    client = make_app().test_client()
    assert post(client, (encode(item_image(150)), "dim.png")).get_json()["needs_review"] is False


def test_a_version_answers_with_its_own_review_threshold_unless_the_operator_sets_one(monkeypatch):
    bright = (encode(item_image(250)), "bright.png")  # the fake answers 0.9 for a bright item
    strict = make_app(FakePredictor(review_threshold=0.95)).test_client()
    assert post(strict, bright).get_json()["needs_review"] is True
    assert strict.get("/metrics?format=json").get_json()["review_threshold"] == pytest.approx(0.95)
    default = make_app(FakePredictor()).test_client()  # a version without its own threshold: 0.7
    assert post(default, bright).get_json()["needs_review"] is False
    assert default.get("/metrics?format=json").get_json()["review_threshold"] == pytest.approx(0.7)
    monkeypatch.setenv("REVIEW_THRESHOLD", "0.8")
    overridden = make_app(FakePredictor(review_threshold=0.95)).test_client()
    assert post(overridden, bright).get_json()["needs_review"] is False
    assert overridden.get("/metrics?format=json").get_json()["review_threshold"] == pytest.approx(0.8)


def test_several_files_are_scored_in_one_forward_pass():
    fake = FakePredictor()
    client = make_app(fake).test_client()
    calls_before = fake.calls
    images = [encode(item_image(v)) for v in (60, 150, 240)]
    r = post(client, *[(b, f"{i}.png") for i, b in enumerate(images)], field="files")
    assert r.status_code == 200
    body = r.get_json()
    assert fake.calls == calls_before + 1
    assert [p["class_id"] for p in body["predictions"]] == [60 // 26, 150 // 26, 240 // 26]
    assert [p["filename"] for p in body["predictions"]] == ["0.png", "1.png", "2.png"]
    assert body["count"] == 3 and body["needs_review"] == 2
    assert body["model_version"] == "7"


def test_one_bad_file_rejects_the_request_and_names_it(client):
    r = post(client, (encode(item_image()), "ok.png"), (b"junk", "bad.png"), field="files")
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "invalid_image" and "file 1" in body["message"] and "bad.png" in body["message"]
    assert metrics(client)["predictions"]["total"] == 0


def test_no_file_is_400(client):
    r = client.post("/predict", data={"other": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "no_file"
    r = client.post("/predict", data=b"raw bytes", content_type="application/octet-stream")
    assert r.status_code == 400 and r.get_json()["error"] == "no_file"


def test_too_many_files_is_413():
    client = make_app(max_files=2).test_client()
    r = post(client, *[(encode(item_image()), f"{i}.png") for i in range(3)], field="files")
    assert r.status_code == 413 and r.get_json()["error"] == "too_many_files"


def test_body_over_the_limit_is_413():
    client = make_app(max_upload_bytes=10_000).test_client()
    r = post(client, (np.random.default_rng(0).bytes(20_000), "big.png"))
    assert r.status_code == 413
    assert r.get_json()["error"] == "body_too_large"


@pytest.mark.parametrize(
    ("body_error", "status"), [("body_too_large", 413), ("request_timeout", 408), ("bad_content_length", 400)]
)
def test_a_body_the_server_front_could_not_read_is_a_json_error_and_counted(body_error, status):
    from model_serving.rsgi import BODY_ERROR

    client = make_app().test_client()
    r = client.post("/predict", data=b"", environ_overrides={BODY_ERROR: body_error})
    assert r.status_code == status and r.is_json
    assert r.json["error"] == {"bad_content_length": "bad_request"}.get(body_error, body_error)
    errors = metrics(client)["errors"]
    assert any(e["endpoint"] == "/predict" and e["status"] == status for e in errors)


@pytest.mark.parametrize("case", bad_upload_corpus(), ids=lambda c: c.name)
def test_bad_upload_corpus(client, case):
    r = post(client, (case.data, case.filename))
    assert r.status_code in case.expected, r.get_json()
    body = r.get_json()
    if r.status_code != 200:
        assert set(body) == {"error", "message"} and body["message"]
        if case.code:
            assert body["error"] == case.code


def test_pixel_limit_is_configurable():
    client = make_app(max_pixels=28 * 28 - 1).test_client()
    r = post(client, (encode(item_image()), "a.png"))
    assert r.status_code == 413 and r.get_json()["error"] == "image_too_large"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2048), st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)))
def test_arbitrary_bytes_never_yield_5xx(client, data):
    r = post(client, (data, "x.png"))
    assert r.status_code in (200, 400, 413, 415), r.data
    assert r.mimetype == "application/json"


def test_errors_are_counted_by_status_and_predictions_only_for_scored_items(client):
    for _ in range(3):
        assert post(client, (encode(item_image(230)), "a.png")).status_code == 200
    assert post(client, (encode(item_image(150)), "b.png")).status_code == 200
    assert post(client, (b"", "empty.png")).status_code == 400
    assert post(client, (b"%PDF-1.4 x", "a.pdf")).status_code == 415
    assert client.get("/nope").status_code == 404
    m = metrics(client)
    by = {(r["endpoint"], r["status"]): r["count"] for r in m["requests"]}
    assert by[("/predict", 200)] == 4 and by[("/predict", 400)] == 1 and by[("/predict", 415)] == 1
    assert by[("unmatched", 404)] == 1
    errors = {(e["endpoint"], e["code"]): e["count"] for e in m["errors"]}
    assert errors[("/predict", "empty_image")] == 1 and errors[("/predict", "unsupported_format")] == 1
    assert m["predictions"]["total"] == 4
    assert m["predictions"]["per_class"][CLASS_NAMES[230 // 26]] == 3
    assert m["predictions"]["per_class"][CLASS_NAMES[150 // 26]] == 1
    assert m["predictions"]["needs_review"] == 1
    assert m["predictions"]["confidence"]["count"] == 4
    assert m["latency"]["/predict"]["count"] == 6
    assert 0 < m["latency"]["/predict"]["p50_ms"] <= m["latency"]["/predict"]["p99_ms"]
    assert m["requests_per_minute"] >= 7  # every request above, the metrics read itself excluded
    assert m["process"]["rss_bytes"] > 0 and m["system"]["memory_percent"] > 0


def test_metrics_prometheus_text_parses():
    from prometheus_client.parser import text_string_to_metric_families

    client = make_app().test_client()
    post(client, (encode(item_image(230)), "a.png"))
    for r in (client.get("/metrics?format=prometheus"), client.get("/metrics", headers={"Accept": "text/plain"})):
        assert r.status_code == 200 and r.mimetype == "text/plain"
        families = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}
        assert {"ric_http_requests", "ric_predictions", "ric_request_duration_seconds"} <= set(families)
        scored = [s for s in families["ric_predictions"].samples if s.name == "ric_predictions_total"]
        assert sum(s.value for s in scored) == 1
    assert client.get("/metrics", headers={"Accept": "*/*"}).mimetype == "application/json"
    assert client.get("/metrics?format=xml").status_code == 400


def test_health_reports_the_model(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.get_json()
    assert body["ready"] is True and body["live"] is True
    assert body["model"]["version"] == "7" and body["model"]["alias"] == "champion"
    assert body["uptime_seconds"] >= 0


def test_unready_model_gives_503_json():
    def broken_loader(info):
        raise RuntimeError("cannot open http://user:secret@registry/artifacts/model.tflite")

    app = create_app(background=False, resolver=lambda: None, loader=broken_loader)
    client = app.test_client()
    health = client.get("/health")
    body = health.get_json()
    assert health.status_code == 503 and body["ready"] is False and body["status"] == "error"
    assert body["error"] == "load_failed" and body["reason"] == "the model version could not be loaded"
    assert "secret" not in health.get_data(as_text=True)  # an exception's text never reaches a client
    r = post(client, (encode(item_image()), "a.png"))
    assert r.status_code == 503 and r.get_json()["error"] == "model_not_ready"
    assert client.get("/drift-status").status_code == 503


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (
            ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): http://user:secret@127.0.0.1:9/api"),
            "registry_unreachable",
        ),
        (type("MlflowLike", (Exception,), {"error_code": "RESOURCE_DOES_NOT_EXIST"})("no alias champion"), "no_model"),
    ],
)
def test_a_registry_failure_is_a_code_and_a_short_reason(failure, code):
    def resolver():
        raise failure

    app = create_app(background=False, resolver=resolver, loader=lambda info: FakePredictor())
    health = app.test_client().get("/health")
    assert health.status_code == 503 and health.get_json()["error"] == code
    assert "secret" not in health.get_data(as_text=True) and "127.0.0.1" not in health.get_data(as_text=True)


def test_drift_status_sees_the_scored_items(monkeypatch):
    from model_serving import drift_status

    monkeypatch.setattr(drift_status, "REFRESH_SECONDS", 0.05)  # the background refresh, every 5 s in service
    client = make_app().test_client()
    first = client.get("/drift-status").get_json()
    assert first["status"] == "insufficient_data" and first["window_size"] == 0
    for v in range(200, 230):
        assert post(client, (encode(item_image(v)), "a.png")).status_code == 200
    post(client, (b"junk", "bad.png"))  # rejected uploads never enter the window
    wait_for(lambda: client.get("/drift-status").get_json()["window_size"] == 30)
    body = client.get("/drift-status").get_json()
    assert body["window_size"] == 30 and body["reference_size"] == 100
    assert body["status"] in ("ok", "drift") and body["tests"]
    assert {"statistic", "p_value", "effect_size"} <= set(body["tests"][0])
    assert body["model_version"] == "7"


def test_polling_the_drift_status_costs_one_computation_not_one_per_request(monkeypatch):
    # ~30 ms of CPU per call: 8 clients polling it took /predict from 327 to 22.6 req/s.
    from model_serving import drift_status

    calls = []
    real = drift_status.evaluate_drift
    monkeypatch.setattr(drift_status, "REFRESH_SECONDS", 3600.0)
    app = make_app()
    mine = app.extensions["ric"]["state"].served.reference  # other tests' apps may refresh theirs meanwhile
    monkeypatch.setattr(
        drift_status, "evaluate_drift", lambda ref, *rest: calls.append(ref is mine) or real(ref, *rest)
    )
    client = app.test_client()
    for v in range(200, 230):
        post(client, (encode(item_image(v)), "a.png"))
    bodies = [client.get("/drift-status").get_json() for _ in range(50)]
    assert calls.count(True) == 1 and all(b == bodies[0] for b in bodies)
    assert bodies[0]["window_size"] == 30 and bodies[0]["computed_at"] > 0


def test_known_test_traffic_stays_out_of_the_drift_window_and_the_class_mix():
    # 20 s of one repeated image from a smoke test made /drift-status report drift on 18 of 18 tests.
    app = make_app(test_traffic_token="tt")
    client = app.test_client()
    image = {"file": [(io.BytesIO(encode(item_image(240))), "a.png")]}
    for _ in range(10):
        r = client.post("/predict", data=dict(image), headers={"X-Test-Traffic": "tt"})
        image = {"file": [(io.BytesIO(encode(item_image(240))), "a.png")]}
        assert r.status_code == 200 and r.headers["X-Test-Traffic"] == "excluded"
    r = client.post("/predict", data=image, headers={"X-Test-Traffic": "guess"})  # a wrong token means nothing
    assert r.status_code == 200 and "X-Test-Traffic" not in r.headers
    assert metrics(client)["predictions"]["total"] == 1
    window = app.extensions["ric"]["state"].served.feed.snapshot()
    assert len(next(iter(window.values()))) == 1
    untokened = make_app().test_client()  # without a configured token the header is ignored
    untokened.post(
        "/predict", data={"file": [(io.BytesIO(encode(item_image())), "a.png")]}, headers={"X-Test-Traffic": ""}
    )
    assert metrics(untokened)["predictions"]["total"] == 1


def test_drift_status_without_reference_is_503():
    app = create_app(FakePredictor(), background=False)
    r = app.test_client().get("/drift-status")
    assert r.status_code == 503 and r.get_json()["error"] == "reference_unavailable"


def test_json_404_405_and_500():
    app = make_app()
    client = app.test_client()
    r = client.get("/missing")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and r.get_json()["error"] == "method_not_allowed" and "POST" in r.headers["Allow"]

    class Exploding(FakePredictor):
        def predict_proba(self, images):
            if self.calls:
                raise RuntimeError("boom")
            return super().predict_proba(images)

    client = make_app(Exploding()).test_client()
    r = post(client, (encode(item_image()), "a.png"))
    assert r.status_code == 500 and r.get_json()["error"] == "internal_error"
    assert metrics(client)["predictions"]["total"] == 0


def test_openapi_matches_the_routes():
    app = make_app()
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    routed = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.rule.startswith("/static")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed


def test_admin_reload_needs_the_token():
    assert make_app().test_client().post("/admin/reload").status_code == 404  # disabled without a token
    client = make_app(admin_token="s3cret").test_client()
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 202 and r.get_json() == {"requested": True, "model_version": "7", "error": None}


def test_hot_swap_serves_the_new_version_without_restart():
    from inference.versions import ModelInfo

    versions = {"current": "1"}

    def resolver():
        return ModelInfo("refund-item-classifier", versions["current"], "champion", "run", "models:/x@champion")

    def loader(info):
        return FakePredictor(version=info.version)

    app = create_app(
        settings=serving_settings(admin_token="t"),
        background=False,
        resolver=resolver,
        loader=loader,
        reference_loader=lambda info: None,
    )
    client = app.test_client()
    assert post(client, (encode(item_image()), "a.png")).get_json()["model_version"] == "1"
    versions["current"] = "2"
    r = client.post("/admin/reload", headers={"Authorization": "Bearer t"})
    assert r.status_code == 202 and r.get_json()["requested"] is True  # asked for; checked off the request
    wait_for(lambda: client.get("/health").get_json()["model"]["version"] == "2")
    assert post(client, (encode(item_image()), "a.png")).get_json()["model_version"] == "2"
    assert client.get("/health").get_json()["model"]["version"] == "2"
    # The poller's check is the same call: nothing new -> no swap.
    assert app.extensions["ric"]["state"].check_for_update() is False


def test_dashboard_is_served_at_root(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"


def test_responses_are_plain_json(client):
    r = post(client, (encode(item_image()), "a.png"))
    assert json.loads(r.data)["class_name"] in CLASS_NAMES


def wait_for(condition, timeout: float = 60.0) -> None:
    """Until ``condition()`` holds (a guard against hanging, not a bound on speed)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


# --- unknown items (issue 27): unfamiliar, needs_review and review_reason ----------------------------------------


def _checkerboard() -> np.ndarray:
    yy, xx = np.mgrid[:28, :28]
    return (((yy + xx) % 2) * 240).astype(np.uint8)  # a texture, no item: the scoring fake calls it unfamiliar


def test_an_unfamiliar_item_goes_to_a_person_with_its_reason_and_is_counted(monkeypatch):
    from tests.support.fakes import ScoringFakePredictor

    client = make_app(ScoringFakePredictor()).test_client()
    r = post(client, (encode(_checkerboard()), "mug.png"), (encode(item_image(230)), "shirt.png"),
             (encode(item_image(150)), "dim.png"), field="files")  # fmt: skip
    odd, shirt, dim = r.get_json()["predictions"]
    assert odd["unfamiliar"] is True and odd["needs_review"] is True and odd["review_reason"] == "unfamiliar"
    assert odd["unfamiliarity"] > 5.0
    assert shirt["unfamiliar"] is False and shirt["needs_review"] is False and shirt["review_reason"] is None
    assert dim["unfamiliar"] is False and dim["review_reason"] == "low_confidence"  # confidence 0.5
    assert r.get_json()["needs_review"] == 2
    m = metrics(client)
    assert m["unfamiliar_threshold"] == 5.0
    assert m["predictions"]["unfamiliar"] == 1 and m["predictions"]["unfamiliar_share"] == pytest.approx(1 / 3)
    assert "ric_unfamiliar_total 1.0" in client.get("/metrics?format=prometheus").get_data(as_text=True)
    drift = client.get("/drift-status").get_json()
    assert drift["unfamiliar_share"] == pytest.approx(1 / 3) and drift["unfamiliar_items"] == 3

    monkeypatch.setenv("UNFAMILIAR_THRESHOLD", "100")  # the operator's threshold beats the version's own
    relaxed = make_app(ScoringFakePredictor()).test_client()
    body = post(relaxed, (encode(_checkerboard()), "mug.png")).get_json()
    assert body["unfamiliar"] is False and body["review_reason"] is None
    assert metrics(relaxed)["unfamiliar_threshold"] == 100.0


def test_a_version_without_the_score_never_says_unfamiliar(client):
    """Versions exported before the score (10 outputs, no threshold tag) serve as before: low confidence only."""
    body = post(client, (encode(_checkerboard()), "mug.png")).get_json()
    assert body["unfamiliar"] is False and body["unfamiliarity"] is None
    dim = post(client, (encode(item_image(150)), "dim.png")).get_json()
    assert dim["needs_review"] is True and dim["review_reason"] == "low_confidence"
    m = metrics(client)
    assert m["unfamiliar_threshold"] is None
    assert m["predictions"]["unfamiliar"] == 0 and m["predictions"]["unfamiliar_share"] is None
    assert client.get("/drift-status").get_json()["unfamiliar_share"] is None
