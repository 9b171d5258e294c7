"""The inference package: records, runtimes and their parity with Keras, export, loading and its fallbacks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from data_processing.preprocessing import to_model_batch
from inference.exporting import MIN_AGREEMENT, ExportPlan, check_parity, convert, export_runtime, load_runtime
from inference.loading import RuntimeUnavailable, load_predictor, predictor_from_directory
from inference.records import describe, describe_columns
from inference.runtimes import KerasGraphRuntime
from inference.versions import ModelInfo, resolve_model
from tests.support.inference import random_probs
from tests.support.models import make_tiny_images, register_tiny_model

INFO = ModelInfo("refund-item-classifier", "1", "champion", None, "test://")


def _tiny_model(seed: int = 0):
    """A small CNN trained a little on generated items, so its answers are not all ties."""
    import keras

    images, labels = make_tiny_images(256, seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(to_model_batch(images), labels, epochs=3, batch_size=64, verbose=0)
    return model, images, labels


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


def test_describe_columns_equals_the_api_record_format_exactly():
    probs = random_probs(500, seed=1)
    expected = describe(probs, review_threshold=0.7)
    cols = describe_columns(probs, 0.7)
    for i, rec in enumerate(expected):
        assert cols["class_id"][i] == rec["class_id"]
        assert cols["class_name"][i] == rec["class_name"]
        assert cols["confidence"][i] == rec["confidence"]  # bit-identical rounding
        assert cols["needs_review"][i] == rec["needs_review"]
        assert json.loads(cols["top3"][i]) == rec["top3"]
        assert cols["top3"][i] == json.dumps(rec["top3"])
    assert expected[0]["class_id"] == 0 and [t["class_id"] for t in expected[1]["top3"][:2]] == [3, 7]  # stable ties


@pytest.mark.parametrize("kind", ["litert-int8", "litert", "onnx"])
def test_every_runtime_agrees_with_keras(tiny, kind):
    model, images, _ = tiny
    x = to_model_batch(images)
    want = KerasGraphRuntime(model).run(x)
    runtime = load_runtime(kind, convert(model, kind))
    got = runtime.run(x)
    assert got.shape == want.shape
    assert np.mean(got.argmax(1) == want.argmax(1)) >= MIN_AGREEMENT
    # float32 runtimes reproduce the probabilities; int8 weights move them a little, never the ranking much.
    np.testing.assert_allclose(got, want, atol=0.05 if kind.endswith("int8") else 1e-4)
    assert not np.allclose(want, want[:1], atol=1e-3)  # a model whose answers differ per image: a real check


def test_litert_runs_any_batch_size_and_many_threads_like_one_image_at_a_time(tiny):
    model, images, _ = tiny
    runtime = load_runtime("litert", convert(model, "litert"), threads=1)
    x = to_model_batch(images[:70])
    one_by_one = np.concatenate([runtime.run(x[i : i + 1]) for i in range(len(x))])
    runtime.chunk = 32  # force chunking and padding (70 = 32 + 32 + 6 -> padded to 8)
    np.testing.assert_allclose(runtime.run(x), one_by_one, atol=1e-6)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = runtime.run(x[i : i + 1 + i % 5])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        np.testing.assert_allclose(got, one_by_one[i : i + 1 + i % 5], atol=1e-6)


def test_parity_fails_when_the_top_classes_disagree():
    labels = {"val": np.array([0, 1, 2, 3])}
    ref = {"val": np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]}
    assert check_parity("x", ref, ref, labels).passed
    swapped = {"val": np.eye(10, dtype=np.float32)[[0, 1, 2, 4]]}
    parity = check_parity("x", ref, swapped, labels)
    assert not parity.passed and parity.argmax_agreement == 0.75 and "75.00%" in parity.reason
    assert parity.accuracy["val"] == 0.75 and parity.keras_accuracy["val"] == 1.0
    nan = {"val": np.full((4, 10), np.nan, np.float32)}
    assert not check_parity("x", ref, nan, labels).passed


def test_export_writes_every_runtime_that_passes_and_each_loads(tiny, tmp_path):
    model, images, labels = tiny
    splits = {"val": (images[:128], labels[:128]), "test": (images[128:], labels[128:])}
    result = export_runtime(model, splits, tmp_path)
    assert result.chosen is not None and result.runtime == "litert-int8"  # the preferred candidate comes first
    assert result.passed == ["litert-int8", "onnx", "litert"]  # all three kept: where they run decides
    manifest = json.loads((tmp_path / "runtime.json").read_text())
    assert manifest["passed"] and manifest["kind"] == "litert-int8" and manifest["views"] == 1
    assert [r["kind"] for r in manifest["runtimes"]] == result.passed
    assert manifest["parity"]["argmax_agreement"] >= MIN_AGREEMENT
    metrics = result.metrics()
    assert metrics["runtime_parity_passed"] == 1.0 and "keras_test_accuracy" in metrics
    assert metrics["runtime_val_accuracy"] == pytest.approx(metrics["keras_val_accuracy"], abs=0.01)
    want = KerasGraphRuntime(model).run(to_model_batch(images))
    for kind, name in (("litert-int8", "litert-int8"), ("onnx", "onnxruntime"), ("litert", "litert")):
        assert (tmp_path / next(r["file"] for r in manifest["runtimes"] if r["kind"] == kind)).is_file()
        predictor = predictor_from_directory(tmp_path, INFO, kind=kind)
        assert np.mean(predictor.predict_proba(images).argmax(1) == want.argmax(1)) >= MIN_AGREEMENT
        assert predictor.describe_runtime()["runtime"] == name and predictor.export_kind == kind
    assert predictor_from_directory(tmp_path, INFO).runtime_name == "litert-int8"  # the preferred, by default


def test_an_export_of_one_runtime_from_before_every_runtime_was_kept_still_loads(tiny, tmp_path):
    """Versions exported by earlier code hold one runtime as ``model.tflite`` and one probe answer ``probs``."""
    model, images, labels = tiny
    export_runtime(model, {"val": (images, labels)}, tmp_path, plan=ExportPlan(candidates=["litert-int8"]))
    manifest = json.loads((tmp_path / "runtime.json").read_text())
    (tmp_path / "model-int8.tflite").rename(tmp_path / "model.tflite")
    del manifest["runtimes"]
    manifest["file"] = "model.tflite"
    (tmp_path / "runtime.json").write_text(json.dumps(manifest))
    with np.load(tmp_path / "probe.npz") as probe:
        np.savez(tmp_path / "probe.npz", images=probe["images"], probs=probe["probs"])
    assert predictor_from_directory(tmp_path, INFO).runtime_name == "litert-int8"


def test_an_export_that_fails_parity_says_so_and_is_not_loaded(tiny, tmp_path):
    model, images, labels = tiny
    result = export_runtime(
        model, {"val": (images, labels)}, tmp_path, plan=ExportPlan(candidates=["litert"], min_agreement=1.01)
    )
    assert result.chosen is None and result.runtime == "keras-graph"
    assert not (tmp_path / "model.tflite").exists()
    assert result.metrics()["runtime_parity_passed"] == 0.0
    with pytest.raises(RuntimeUnavailable, match="failed parity"):
        predictor_from_directory(tmp_path, INFO)


def test_a_runtime_that_disagrees_with_its_probe_here_is_refused(tiny, tmp_path):
    model, images, labels = tiny
    export_runtime(model, {"val": (images, labels)}, tmp_path, plan=ExportPlan(candidates=["onnx"]))
    with np.load(tmp_path / "probe.npz") as probe:
        np.savez(tmp_path / "probe.npz", images=probe["images"], probs_onnx=probe["probs_onnx"][::-1])
    with pytest.raises(RuntimeUnavailable, match="disagrees with its export probe"):
        predictor_from_directory(tmp_path, INFO)


def test_a_test_time_augmented_model_exports_with_its_views(tmp_path):
    from inference.tta import TTA_VIEWS, shift_images, with_tta

    network, images, labels = _tiny_model(seed=3)
    served = with_tta(network, "shift5")
    result = export_runtime(served, {"val": (images, labels)}, tmp_path, plan=ExportPlan(candidates=["litert"]))
    predictor = predictor_from_directory(tmp_path, INFO)
    assert result.manifest["views"] == 5 and predictor.views == 5
    x = to_model_batch(images[:8])
    want = np.mean([network.predict(shift_images(x, *v), verbose=0) for v in TTA_VIEWS["shift5"]], axis=0)
    np.testing.assert_allclose(predictor.predict_proba(images[:8]), want, atol=1e-4)
    assert not np.allclose(network.predict(x, verbose=0), want, atol=1e-4)  # the views are really applied


def test_loading_prefers_the_exported_runtime_and_falls_back_with_a_reason(settings):
    uri = settings.mlflow_tracking_uri
    exported = register_tiny_model(uri)
    predictor = load_predictor(f"models:/refund-item-classifier/{exported.version}", uri, runtime="exported")
    assert predictor.runtime_name == "litert-int8" and predictor.fallback_reason is None
    bare = register_tiny_model(uri, export=False)
    fallback = load_predictor(f"models:/refund-item-classifier/{bare.version}", uri)
    assert fallback.runtime_name == "keras-graph"
    assert "no exported runtime" in fallback.fallback_reason and "inference.export" in fallback.fallback_reason
    with pytest.raises(RuntimeUnavailable):
        load_predictor(f"models:/refund-item-classifier/{bare.version}", uri, runtime="exported")
    keras = load_predictor(f"models:/refund-item-classifier/{exported.version}", uri, runtime="keras")
    x = np.stack([make_tiny_images(4, seed=9)[0]])[0]
    assert np.array_equal(keras.predict_proba(x).argmax(1), predictor.predict_proba(x).argmax(1))


def test_the_export_command_adds_a_runtime_to_an_existing_version(settings, tmp_path):
    from mlflow import MlflowClient

    from inference.export import main
    from tests.support.training import write_tiny_splits

    uri = settings.mlflow_tracking_uri
    write_tiny_splits(Path(settings.storage_uri))
    bare = register_tiny_model(uri, export=False)
    assert load_predictor(settings.model_uri, uri).runtime_name == "keras-graph"
    assert main([settings.model_uri]) == 0
    info = resolve_model(settings.model_uri, uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(info.run_id)
    assert run.data.metrics["runtime_argmax_agreement"] >= MIN_AGREEMENT
    assert {"keras_val_accuracy", "keras_test_accuracy", "runtime_test_accuracy", "runtime_max_prob_diff"} <= set(
        run.data.metrics
    )
    assert run.data.tags["runtime"] == "litert-int8" and run.data.tags["runtimes"] == "litert-int8,onnx,litert"
    tags = client.get_model_version("refund-item-classifier", bare.version).tags
    assert tags["runtime"] == "litert-int8" and tags["runtimes"] == "litert-int8,onnx,litert"
    assert sorted(a.path for a in client.list_artifacts(info.run_id, "runtime")) == [
        "runtime/model-int8.tflite",
        "runtime/model.onnx",
        "runtime/model.tflite",
        "runtime/probe.npz",
        "runtime/runtime.json",
    ]
    assert load_predictor(settings.model_uri, uri, runtime="exported").runtime_name == "litert-int8"
    assert main(["models:/refund-item-classifier/99"]) == 3  # no such version
    assert main([settings.model_uri, "--candidates", "tensorrt"]) == 2


def test_a_version_carries_the_review_threshold_it_was_trained_with(settings):
    from mlflow import MlflowClient

    from inference.records import DEFAULT_REVIEW_THRESHOLD, review_threshold_for
    from inference.versions import REVIEW_THRESHOLD_TAG

    uri = settings.mlflow_tracking_uri
    version = register_tiny_model(uri, export=False).version
    client = MlflowClient(tracking_uri=uri)
    assert resolve_model(settings.model_uri, uri).review_threshold is None  # registered without one
    client.set_model_version_tag("refund-item-classifier", version, REVIEW_THRESHOLD_TAG, "0.8712")
    info = resolve_model(settings.model_uri, uri)
    assert info.review_threshold == pytest.approx(0.8712)
    assert review_threshold_for(None, info) == pytest.approx(0.8712)
    assert review_threshold_for(0.5, info) == 0.5  # the operator's REVIEW_THRESHOLD wins
    assert review_threshold_for(None, None) == DEFAULT_REVIEW_THRESHOLD
    for bad in ("high", "1.7"):  # a hand-edited tag falls back to the default instead of failing the load
        client.set_model_version_tag("refund-item-classifier", version, REVIEW_THRESHOLD_TAG, bad)
        assert resolve_model(settings.model_uri, uri).review_threshold is None
