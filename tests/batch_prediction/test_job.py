"""The nightly job end to end, in process, with a real registered model: local store and a real moto S3 server."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from mlflow import MlflowClient

from batch_prediction.batch_predict import main
from common.settings import Settings
from common.storage import storage_from_settings
from inference.loading import load_predictor
from tests.support.batch import assert_exactly_once, assert_no_partial_files, run_prefixes, seed_incoming, union_records

pytestmark = pytest.mark.slow


def _summary(storage, prefix: str) -> dict:
    return json.loads(storage.get_bytes(f"{prefix}/summary.json"))


def _csv_rows(storage, key: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.get_bytes(key).decode())))


def _night_runs(settings: Settings):
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("batch-predictions")
    assert exp is not None, "the night's MLflow experiment was not created"
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_local_night_scores_everything_once_with_outputs_quarantine_and_mlflow(night_env, tmp_path):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 190, corrupt=10)  # 5 % broken photos
    dsstore = "incoming/2026-11-26/.DS_Store"
    storage.put_bytes(dsstore, b"\0")  # not a photo: quarantined with its reason, not in the failure rate

    assert main(["--batch-size", "64", "--workers", "2"]) == 0

    [prefix] = run_prefixes(storage)
    assert storage.exists(f"{prefix}/_SUCCESS")
    summary = _summary(storage, prefix)
    assert (summary["scored"], summary["failed"], summary["items"], summary["not_photos"]) == (190, 11, 201, 1)
    assert summary["failure_rate"] == pytest.approx(0.05)
    bad = [*bad, dsstore]
    assert summary["model"]["version"] == str(version)
    assert summary["this_invocation"]["peak_rss_mb"] > 0 and summary["this_invocation"]["cpu_seconds"] > 0

    # The night scored with the runtime that was fastest here at its batch size, and says so.
    choice = summary["model"]["runtime_choice"]
    assert choice["path"] == "batch" and choice["batch"] == 64 and choice["how"] == "measured"
    assert choice["chosen"] == min(choice["timings_ms"], key=choice["timings_ms"].get)
    _, runs = _night_runs(settings)
    assert runs[-1].data.tags["runtime_choice"] == choice["reason"]

    rows = assert_exactly_once(storage, good + bad, version)
    by_key = {r["key"]: r for r in rows}
    # Scores are the model's own (same preprocessing, same runtime as the API would use for that path).
    forced = {"keras-graph": "keras"}.get(choice["chosen"], choice["chosen"])
    predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri, runtime=forced)
    from data_processing.preprocessing import preprocess_bytes

    sample = good[:20]
    probs = predictor.predict_proba(np.stack([preprocess_bytes(storage.get_bytes(k)) for k in sample]))
    assert [by_key[k]["class_id"] for k in sample] == probs.argmax(axis=1).tolist()
    assert [by_key[k]["confidence"] for k in sample] == pytest.approx(probs.max(axis=1).tolist(), abs=1e-5)
    assert all(len(json.loads(by_key[k]["top3"])) == 3 for k in sample)

    # CSV parts mirror the Parquet parts; the people's lists are complete.
    csv_keys = [r["key"] for p in storage.list(f"{prefix}/csv/") for r in _csv_rows(storage, p.key)]
    assert sorted(csv_keys) == sorted(good + bad)
    review = _csv_rows(storage, f"{prefix}/needs_review.csv")
    assert len(review) == summary["needs_review"] == sum(1 for r in rows if r["needs_review"])
    quarantine = _csv_rows(storage, f"{prefix}/quarantine.csv")
    assert sorted(q["key"] for q in quarantine) == sorted(bad)
    assert {q["error_code"] for q in quarantine} <= {"empty_image", "invalid_image", "hidden_file"} and all(
        q["error"] for q in quarantine
    )
    assert sum(summary["failures_by_reason"].values()) == 11 and summary["failures_by_reason"]["hidden_file"] == 1
    assert all(storage.exists(k) for k in good + bad), "inputs are never deleted"
    assert_no_partial_files(storage.local_path(""))

    # One MLflow run for the night, with the night's health.
    client, [run] = _night_runs(settings)
    assert run.info.status == "FINISHED"
    # Named and described for a person (it was `night-<date>-<run id>`, with no description).
    assert run.info.run_name == f"night {summary['date']}"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"Night {summary['date']}: 190 photo(s) under incoming/ scored by refund-item-classifier v")
    assert f"{summary['failed']} quarantined" in note and summary["output"] in note
    m = run.data.metrics
    assert (m["images_scored"], m["images_failed"], m["images_skipped"]) == (190, 11, 0)
    assert m["throughput_images_per_s"] > 0 and m["peak_rss_mb"] > 0 and "confidence_p50" in m
    assert sum(m[f"class_count_{k}"] for k in range(10)) == 190
    assert m["needs_review_rate"] == pytest.approx(summary["needs_review_rate"])
    assert run.data.params["model_version"] == str(version)
    assert run.data.tags["output_location"].endswith(prefix)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "drift.json", "confidence_histogram.png", "class_histogram.json"} <= artifacts
    with open(client.download_artifacts(run.info.run_id, "drift.json", str(tmp_path))) as fh:
        drift = json.load(fh)
    assert drift["status"] in ("ok", "drift", "insufficient_data")
    assert drift["window_size"] == 190
    assert m["drift_window_size"] == 190

    # predictions/LATEST names the night; a rerun has nothing new and writes nothing (it wrote an empty output
    # folder and an MLflow run tagged night_status=ok every time); new photos only are scored next time.
    assert storage.get_bytes("predictions/LATEST").decode() == f"{prefix}\n"
    assert main(["--batch-size", "64", "--workers", "0"]) == 0
    assert run_prefixes(storage) == [prefix] and len(_night_runs(settings)[1]) == 1
    assert storage.get_bytes("predictions/LATEST").decode() == f"{prefix}\n"
    more, _ = seed_incoming(storage, 7, seed=5, tag="b")
    assert main(["--workers", "0"]) == 0
    assert _summary(storage, run_prefixes(storage)[-1])["scored"] == 7
    assert storage.get_bytes("predictions/LATEST").decode() == f"{run_prefixes(storage)[-1]}\n"
    assert_exactly_once(storage, good + bad + more, version)

    # --rescore scores everything again, on purpose, in a new run.
    assert main(["--rescore", "--workers", "0"]) == 0
    latest = _summary(storage, run_prefixes(storage)[-1])
    assert latest["rescore"] and (latest["scored"], latest["failed"]) == (197, 11)
    _, runs = _night_runs(settings)
    assert len(runs) == 3 and {r.info.run_name for r in runs} == {
        f"night {latest['date']}",
        f"night {latest['date']} rescore",
    }


def test_s3_night_on_a_real_moto_server(s3_uri, night_env):
    settings, version = night_env
    assert settings.storage_uri == s3_uri
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 150, corrupt=2)

    assert main(["--batch-size", "40", "--workers", "2"]) == 0
    [prefix] = run_prefixes(storage)
    assert storage.exists(f"{prefix}/_SUCCESS") and storage.exists(f"{prefix}/needs_review.csv")
    assert _summary(storage, prefix)["output"] == f"{s3_uri}/{prefix}"
    assert_exactly_once(storage, good + bad, version)
    ledger_parts = [i.key for i in storage.list("ledger/") if i.key.endswith(".parquet")]
    assert len(ledger_parts) == 4  # ceil(152 / 40) batches, each committed in the store's ledger

    assert main(["--workers", "0"]) == 0  # nothing new: nothing written
    assert run_prefixes(storage) == [prefix] and len(union_records(storage)) == 152


def test_too_many_broken_photos_exit_1_but_the_night_is_complete(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 12, corrupt=3)
    assert main(["--workers", "0", "--max-failure-rate", "0.1"]) == 1
    [prefix] = run_prefixes(storage)
    assert storage.exists(f"{prefix}/_SUCCESS")
    assert _summary(storage, prefix)["status"] == "failure_rate_exceeded"
    assert_exactly_once(storage, good + bad, version)
    _, [run] = _night_runs(settings)
    assert run.info.status == "FAILED"


def test_the_night_flags_for_review_below_the_champions_own_threshold(night_env):
    from mlflow import MlflowClient

    from inference.versions import REVIEW_THRESHOLD_TAG

    settings, version = night_env
    MlflowClient(tracking_uri=settings.mlflow_tracking_uri).set_model_version_tag(
        "refund-item-classifier", str(version), REVIEW_THRESHOLD_TAG, "1.0"
    )
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 30, corrupt=0)
    assert main(["--batch-size", "64", "--workers", "1"]) == 0
    [prefix] = run_prefixes(storage)
    summary = _summary(storage, prefix)
    rows = assert_exactly_once(storage, good, version)
    assert summary["review_threshold"] == 1.0
    assert summary["needs_review"] == 30 and all(r["needs_review"] for r in rows)  # nothing is that sure


def test_the_night_sends_unfamiliar_items_to_people_with_their_reason(night_env, tmp_path):
    """Issue 27: the champion computes the unfamiliarity score; what is not one of the 10 (a texture with no item)
    is in needs_review.csv as unfamiliar, and the night's summary, MLflow run and drift window count it."""
    from common.images import encode_png
    from inference.versions import UNFAMILIAR_THRESHOLD_TAG
    from tests.support.models import unfamiliar_images

    settings, version = night_env
    mv = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_model_version("refund-item-classifier", version)
    threshold = float(mv.tags[UNFAMILIAR_THRESHOLD_TAG])
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 40)
    odd = [f"incoming/2026-11-26/not-clothing-{i}.png" for i in range(8)]
    for key, img in zip(odd, unfamiliar_images(8, seed=3), strict=True):
        storage.put_bytes(key, encode_png(img))
    assert main(["--batch-size", "16", "--workers", "0"]) == 0

    [prefix] = run_prefixes(storage)
    summary = _summary(storage, prefix)
    by_key = {r["key"]: r for r in assert_exactly_once(storage, good + odd, version)}
    assert all(by_key[k]["unfamiliar"] and by_key[k]["review_reason"] == "unfamiliar" for k in odd)
    assert all(by_key[k]["unfamiliarity"] > threshold for k in odd)
    assert all(by_key[k]["unfamiliarity"] is not None for k in good)
    flagged = sum(by_key[k]["unfamiliar"] for k in good)  # the threshold flags ~5 % of items like these
    assert summary["unfamiliar_threshold"] == pytest.approx(threshold)
    assert summary["unfamiliar"] == 8 + flagged and summary["unfamiliar_rate"] == pytest.approx((8 + flagged) / 48)
    assert summary["review_reasons"]["unfamiliar"] == 8 + flagged
    review = {r["key"]: r for r in _csv_rows(storage, f"{prefix}/needs_review.csv")}
    assert {k: review[k]["review_reason"] for k in odd} == dict.fromkeys(odd, "unfamiliar")
    assert {r["review_reason"] for r in review.values()} <= {"unfamiliar", "low_confidence"}
    _, [run] = _night_runs(settings)
    assert run.data.metrics["unfamiliar"] == 8 + flagged
    assert run.data.metrics["unfamiliar_rate"] == pytest.approx(summary["unfamiliar_rate"])
    assert f"({8 + flagged} unfamiliar)" in run.data.tags["mlflow.note.content"]
    assert summary["drift"]["unfamiliar_share"] == pytest.approx(summary["unfamiliar_rate"])


def test_no_champion_exits_3_and_bad_flags_exit_2(settings):
    storage = storage_from_settings(settings)
    seed_incoming(storage, 3)
    assert main(["--workers", "0"]) == 3
    assert run_prefixes(storage) == []
    assert main(["--batch-size", "0"]) == 2
    assert main(["--date", "26/11/2026"]) == 2
    assert main(["--engine", "spark"]) == 2
