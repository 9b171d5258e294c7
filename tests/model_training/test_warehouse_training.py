"""Retraining that learns from the warehouse: labelled photos split by photo (never crossing splits), the gate's
warehouse rule, and a real (tiny) training run folding the labels in, then fine-tuning from the champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.images import encode_png
from common.labels import CLASS_NAMES
from common.storage import LocalStorage, sha256_hex
from model_training.promotion import (
    PHOTO_TOLERANCE_WAREHOUSE_LEAD,
    WAREHOUSE_TOLERANCE,
    WarehouseComparison,
    should_promote,
    warehouse_lead_is_significant,
)
from model_training.warehouse import build_warehouse, repeats_for, split_of
from monitoring.label_store import ItemChecker, Label, LabelStore
from tests.support.models import make_tiny_images


def _label(key: str, sha: str, label: str, at: str = "2026-12-01T00:00:00") -> Label:
    return Label(key, sha, label, "ann", "api", at, "s1")


def test_the_split_is_by_photo_stable_as_labels_grow_and_never_leaks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    images, classes = make_tiny_images(400, seed=5)
    labels = {}
    for i, (img, c) in enumerate(zip(images, classes, strict=True)):
        data = encode_png(img)
        sha = sha256_hex(data)
        for copy in ("a", "b"):  # the same photo under two keys
            key = f"incoming/d/ret-{copy}-{i:04d}.png"
            storage.put_bytes(key, data)
            labels[(key, sha)] = _label(key, sha, CLASS_NAMES[int(c)])
    storage.put_bytes("incoming/d/other.png", encode_png(images[0]) + b"x")
    labels[("incoming/d/other.png", "f" * 64)] = _label("incoming/d/other.png", "f" * 64, "Bag")  # replaced since
    labels[("incoming/d/ret-a-0000.png", "e" * 64)] = _label("incoming/d/ret-a-0000.png", "e" * 64, "other")

    shares = (0.7, 0.15, 0.15)
    data = build_warehouse(storage, labels, shares)
    assert data.counts["stale"] == 1 and data.counts["not_a_class"] == 1 and len(data) == 800
    shas = {name: {sha256_hex(encode_png(img)) for img in split.images} for name, split in data.splits.items()}
    assert not (shas["train"] & shas["val"]) and not (shas["train"] & shas["test"]) and not (shas["val"] & shas["test"])
    assert 0.6 < data.counts["train"] / 800 < 0.8 and data.counts["test"] > 60
    # A bigger label set later keeps every photo where it was.
    fewer = dict(list(labels.items())[:300])
    again = build_warehouse(storage, fewer, shares)
    for name in ("train", "val", "test"):
        for key in again.splits[name].keys:
            assert key in set(data.splits[name].keys)
    assert split_of("a" * 64, shares) == split_of("a" * 64, shares)
    assert data.digest != again.digest and data.as_of == "2026-12-01T00:00:00"
    assert repeats_for(55_000, 700, 0.15) == 14 and repeats_for(55_000, 0, 0.15) == 0


def test_the_gate_requires_the_challenger_not_worse_on_the_same_warehouse_photos() -> None:
    same = WarehouseComparison(300, challenger=0.80, champion=0.80)
    worse = WarehouseComparison(300, challenger=0.79, champion=0.80)
    better = WarehouseComparison(300, challenger=0.85, champion=0.60)
    assert should_promote(0.91, 0.90, new_photo=0.88, champion_photo=0.87, warehouse=same)[0]
    ok, reason = should_promote(0.91, 0.90, new_photo=0.88, champion_photo=0.87, warehouse=worse)
    assert not ok and "warehouse accuracy 0.7900 vs champion's 0.8000 on the same 300 photos" in reason
    # Better on the warehouse: clean and photo accuracy may be a little lower, never more than the tolerance.
    assert should_promote(0.90 - WAREHOUSE_TOLERANCE / 2, 0.90, new_photo=0.87, champion_photo=0.87, warehouse=better)[
        0
    ]
    ok, reason = should_promote(0.90 - 2 * WAREHOUSE_TOLERANCE, 0.90, warehouse=better)
    assert not ok and "allowed while better" in reason
    assert not should_promote(0.90 - WAREHOUSE_TOLERANCE / 2, 0.90, warehouse=same)[0]  # no gain: no slack
    assert should_promote(0.91, 0.90, warehouse=WarehouseComparison(10, 0.5, None))[0]  # nothing to compare


def test_a_significant_warehouse_lead_outweighs_the_rendered_photos_but_never_the_clean_test_split() -> None:
    # The learning-loop benchmark's case: fine-tuned on turned warehouse photos, 74 % against 43 % on 155 of them.
    lead = WarehouseComparison(155, challenger=0.7419, champion=0.4258)
    assert warehouse_lead_is_significant(lead)
    ok, reason = should_promote(0.9307, 0.9323, new_photo=0.9025, champion_photo=0.9075, warehouse=lead)
    assert ok, reason
    too_low = 0.9075 - 2 * PHOTO_TOLERANCE_WAREHOUSE_LEAD
    ok, reason = should_promote(0.9307, 0.9323, new_photo=too_low, champion_photo=0.9075, warehouse=lead)
    assert not ok and "photo-benchmark accuracy" in reason and f"{PHOTO_TOLERANCE_WAREHOUSE_LEAD:.3f}" in reason
    clean_too_low = 0.9323 - 2 * WAREHOUSE_TOLERANCE
    ok, reason = should_promote(clean_too_low, 0.9323, new_photo=0.91, champion_photo=0.9075, warehouse=lead)
    assert not ok and "test accuracy" in reason  # the clean split keeps its 0.3 points
    # A lead within chance (a few photos, or a small gain) keeps the photo benchmark's 0.3 points.
    for small in (WarehouseComparison(12, 0.75, 0.60), WarehouseComparison(300, 0.82, 0.80)):
        assert _warehouse_lead(small) and not warehouse_lead_is_significant(small)
        assert not should_promote(0.9307, 0.9323, new_photo=0.9025, champion_photo=0.9075, warehouse=small)[0]
    assert not warehouse_lead_is_significant(WarehouseComparison(155, 0.74, None))
    assert not warehouse_lead_is_significant(None)


def _warehouse_lead(w: WarehouseComparison) -> bool:
    return w.champion is not None and w.challenger > w.champion


@pytest.mark.slow
def test_training_folds_warehouse_labels_in_and_finetunes_from_the_champion(tmp_path, monkeypatch, settings, capsys):
    from mlflow import MlflowClient

    from common.settings import Settings
    from model_training.train import main
    from tests.support.training import write_tiny_splits

    root = tmp_path / "store"
    write_tiny_splits(root)
    monkeypatch.setenv("STORAGE_URI", str(root))
    storage = LocalStorage(root)
    images, classes = make_tiny_images(120, seed=11)
    rows = []
    for i, (img, c) in enumerate(zip(images, classes, strict=True)):
        data = encode_png(np.rot90(img).copy())  # the warehouse's photos: turned a quarter
        key = f"incoming/2026-12-01/ret-{i:04d}.png"
        storage.put_bytes(key, data)
        rows.append({"key": key, "sha256": sha256_hex(data), "label": int(c)})
    labels = LabelStore(storage)
    assert labels.submit(rows, who="ann", how="csv", checker=ItemChecker(storage)).accepted == 120

    quick = ["--arch", "tiny", "--limit", "256", "--batch-size", "64", "--set", "photo_val_per_class=2",
             "--set", "photo_test_per_class=3", "--set", "unfamiliar_test_per_kind=2",
             "--set", "unfamiliar_train_per_kind=2", "--set", "unfamiliar_val_per_kind=2",
             "--set", "unfamiliar_fit_per_class=1", "--experiment", "tests-warehouse"]  # fmt: skip
    assert main([*quick, "--epochs", "1", "--no-warehouse"]) == 0  # the first champion knows no warehouse photo
    assert main([*quick, "--finetune"]) == 0
    out = capsys.readouterr().out
    assert "warehouse_accuracy=" in out

    client = MlflowClient(tracking_uri=Settings.from_env().mlflow_tracking_uri)
    mv = client.get_model_version("refund-item-classifier", "2")
    run = client.get_run(mv.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["finetuned_from_version"] == "1" and params["epochs"] == "3" and params["learning_rate"] == "0.001"
    assert int(params["warehouse_train"]) + int(params["warehouse_val"]) + int(params["warehouse_test"]) == 120
    assert len(params["warehouse_labels_digest"]) == 16 and params["warehouse_labels_as_of"] != "none"
    names = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert {"warehouse-labels-train", "warehouse-labels-test"} <= names
    assert metrics["warehouse_test_n"] == int(params["warehouse_test"])
    assert 0.0 <= metrics["warehouse_test_accuracy"] <= 1.0 and "warehouse_test_accuracy_champion" in metrics
    # The photo benchmark stays on Fashion-MNIST's items: both versions are compared on the same photos.
    assert mv.tags["photo_benchmark"] == client.get_model_version("refund-item-classifier", "1").tags["photo_benchmark"]
    # The gate scored the champion on the same warehouse test photos (its verdict is in the DONE line's reason).
    assert f"on the same {params['warehouse_test']} photos" in out
    assert float(mv.tags["warehouse_test_accuracy"]) == pytest.approx(metrics["warehouse_test_accuracy"], abs=1e-6)
    # A person reading MLflow sees what the learning loop added (run name, the version's description).
    assert run.info.run_name.endswith("3ep finetune limit256")
    n = sum(int(params[f"warehouse_{s}"]) for s in ("train", "val", "test"))
    assert "Fine-tuned from version 1." in mv.description and f"With {n} labelled warehouse photos" in mv.description
    assert "Trained on 256 images" in mv.description  # the clean split; the warehouse photos are counted apart
