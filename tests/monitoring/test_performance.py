"""Accuracy over time: the audit sample (monitoring.audit), expected and measured accuracy with its Wilson interval
and status (monitoring.performance), and a real night writing audit.csv and its expectations, measured from
labels and written back to the night's MLflow run."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from mlflow import MlflowClient
from scipy.stats import binom

from batch_prediction.batch_predict import main as batch_main
from batch_prediction.outputs import RECORD_SCHEMA
from common.storage import storage_from_settings
from monitoring.audit import AuditPolicy, AuditSampler
from monitoring.label_store import ItemChecker, LabelStore
from monitoring.nights import AUDIT, list_nights, read_rows, read_summary
from monitoring.performance import (
    StatusPolicy,
    judge,
    measure_night,
    performance_table,
    validated_accuracy,
    wilson,
    write_back,
)
from monitoring.performance import (
    main as performance_main,
)


def test_wilson_interval_matches_known_values_and_covers_at_its_level() -> None:
    # Newcombe (1998), Table I, method 4 (score interval with continuity correction): 15/148, 0/20, 1/29.
    assert tuple(round(x, 4) for x in wilson(15, 148)) == (0.0598, 0.1644)
    assert tuple(round(x, 4) for x in wilson(0, 20)) == (0.0, 0.2005)
    assert tuple(round(x, 4) for x in wilson(1, 29)) == (0.0018, 0.1963)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(20, 20)[1] == pytest.approx(1.0)
    # Exact coverage where the audit sample lives (n = 20-50 items, accuracy near 1): at least the stated 95 %,
    # where the interval without the correction fell to 86 % (n = 30, p = 0.995).
    for n in (20, 30, 50):
        for p in (0.9, 0.95, 0.98, 0.99, 0.995):
            covered = sum(binom.pmf(k, n, p) for k in range(n + 1) if wilson(k, n)[0] <= p <= wilson(k, n)[1])
            assert covered >= 0.95, (n, p, covered)


def test_audit_size_follows_share_minimum_and_cap() -> None:
    policy = AuditPolicy(share=0.02, minimum=20, maximum=200)
    assert [policy.size(n) for n in (0, 7, 500, 1000, 5000, 50_000)] == [0, 7, 20, 20, 100, 200]
    with pytest.raises(ValueError):
        AuditPolicy(minimum=30, maximum=10)


def _records(keys: list[str]) -> pa.Table:
    n = len(keys)
    return pa.Table.from_pydict(
        {name: [None] * n for name in RECORD_SCHEMA.names} | {"key": keys, "status": ["scored"] * n},
        schema=RECORD_SCHEMA,
    )


def test_the_audit_sample_is_seeded_uniform_and_independent_of_batching() -> None:
    keys = [f"incoming/d/ret-{i:05d}.png" for i in range(3000)]
    policy = AuditPolicy(share=0.02, minimum=20, maximum=100)
    whole = AuditSampler(policy, seed="run-1")
    whole.add(_records(keys))
    parts = AuditSampler(policy, seed="run-1")
    for start in range(0, 3000, 700):
        parts.add(_records(keys[start : start + 700][::-1]))
    a, b = whole.table(RECORD_SCHEMA), parts.table(RECORD_SCHEMA)
    assert a.num_rows == 60 and a.column("key").to_pylist() == b.column("key").to_pylist()
    other = AuditSampler(policy, seed="run-2")
    other.add(_records(keys))
    assert set(other.table(RECORD_SCHEMA).column("key").to_pylist()) != set(a.column("key").to_pylist())
    # Uniform: over many seeds every tenth of the keys is drawn about equally often.
    counts = np.zeros(10)
    for s in range(40):
        sampler = AuditSampler(policy, seed=f"s{s}")
        sampler.add(_records(keys))
        for key in sampler.table(RECORD_SCHEMA).column("key").to_pylist():
            counts[int(key[-9:-4]) // 300] += 1
    assert counts.min() > 0.7 * counts.mean()


def test_status_is_unknown_ok_or_degraded_with_the_numbers() -> None:
    policy = StatusPolicy(margin=0.02, min_labels=20)
    assert judge(10, 0.5, 0.9, 0.95, policy)[0] == "unknown"
    assert judge(40, 0.8, 0.95, None, policy)[0] == "unknown"
    status, reason = judge(40, *wilson(30, 40), 0.95, policy)
    assert status == "degraded" and "below the validated 0.950" in reason
    assert judge(40, *wilson(38, 40), 0.95, policy)[0] == "ok"
    assert validated_accuracy(
        {
            "photo_test_confident_error_share_at_target_threshold": 0.016,
            "photo_test_review_share_at_target_threshold": 0.2,
        }
    ) == pytest.approx(0.98)


@pytest.mark.slow
def test_a_night_writes_its_audit_sample_and_expectation_and_labels_measure_it(night_env, monkeypatch) -> None:
    from tests.support.batch import seed_incoming

    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 160)
    monkeypatch.setenv("AUDIT_MIN", "25")
    # The tiny model is unsure of everything: a threshold at its median confidence routes half the items itself.
    from data_processing.preprocessing import preprocess_bytes
    from inference.loading import load_predictor

    predictor = load_predictor(settings.model_uri, settings.mlflow_tracking_uri)
    conf = predictor.predict_proba(np.stack([preprocess_bytes(storage.get_bytes(k)) for k in good])).max(axis=1)
    threshold = f"{float(np.median(conf)):.6f}"
    assert batch_main(["--batch-size", "64", "--workers", "0", "--review-threshold", threshold]) == 0

    [night] = list_nights(storage)
    summary = read_summary(storage, night)
    audit = read_rows(storage, night, AUDIT)
    parts = [
        row
        for key in sorted(k.key for k in storage.list(night.prefix + "/csv/"))
        for row in csv.DictReader(io.StringIO(storage.get_bytes(key).decode()))
    ]
    auto = [r for r in parts if r["needs_review"] == "false"]
    assert 40 < len(auto) < 120
    assert summary["auto_routed"] == len(auto) and summary["audit_sample"] == len(audit) == 25
    assert all(r["needs_review"] == "false" for r in audit)
    assert {r["key"] for r in audit} <= {r["key"] for r in auto}
    expected = summary["expected_accuracy"]
    assert expected["all"] == pytest.approx(np.mean([float(r["confidence"]) for r in parts]))
    assert expected["auto_routed"] == pytest.approx(np.mean([float(r["confidence"]) for r in auto]))

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("batch-predictions").experiment_id])
    assert run.data.metrics["expected_accuracy_auto_routed"] == pytest.approx(expected["auto_routed"])

    # People label the audit sample: the first 20 agree with the model, 3 disagree, 2 are unusable photos.
    labels = LabelStore(storage)
    rows = []
    for i, r in enumerate(audit):
        answer = r["class_name"] if i < 20 else ("unusable" if i >= 23 else "other")
        rows.append({"key": r["key"], "sha256": r["sha256"], "label": answer})
    assert labels.submit(rows, who="ann", how="api", checker=ItemChecker(storage)).accepted == 25
    [perf] = performance_table(storage, labels.current(), lambda v: 0.99, StatusPolicy(0.02, 20))
    assert (perf.audit_labels, perf.audit_correct, perf.labels) == (23, 20, 25)
    assert perf.measured_auto == pytest.approx(20 / 23)
    assert (perf.measured_low, perf.measured_high) == pytest.approx(wilson(20, 23))
    assert perf.status == "degraded" and perf.model_version == str(version)

    assert write_back(settings.mlflow_tracking_uri, [perf]) == 1
    run = client.get_run(run.info.run_id)
    assert run.data.metrics["measured_accuracy_auto"] == pytest.approx(20 / 23)
    assert run.data.metrics["audit_labels"] == 23 and run.data.tags["accuracy_status"] == "degraded"
    assert write_back(settings.mlflow_tracking_uri, [perf]) == 0  # nothing new: nothing written


def test_performance_command_prints_the_table_and_json(night_env, capsys, tmp_path) -> None:
    settings, _ = night_env
    storage = storage_from_settings(settings)
    assert performance_main(["--no-mlflow"]) == 0
    assert "no finished nights" in capsys.readouterr().out
    prefix = "predictions/2026-12-01/20261201T000000000Z-abc123"
    summary = {"scored": 100, "needs_review": 20, "needs_review_rate": 0.2, "auto_routed": 80,
               "model": {"version": "1"}, "expected_accuracy": {"all": 0.9, "auto_routed": 0.97}}  # fmt: skip
    storage.put_bytes(f"{prefix}/summary.json", json.dumps(summary).encode())
    storage.put_bytes(f"{prefix}/_SUCCESS", b"")
    assert performance_main(["--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "2026-12-01/20261201T000000000Z" in out and " 97.0 " in out
    assert "status: unknown" in out
    assert performance_main(["--json", "--no-mlflow"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["expected_auto"] == 0.97 and row["status"] == "unknown"
    assert measure_night(list_nights(storage)[0], summary, [], [], {}, None, StatusPolicy()).audit_size == 0
