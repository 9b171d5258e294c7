"""The reference belongs to the model version, and the evaluation command runs end to end on a real
registered model (tiny, so the numbers are meaningless here; the exit code, table and MLflow run are not)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from common.storage import LocalStorage
from common.tracking import ensure_experiment
from data_processing.dataset import Split, save_split
from inference.versions import resolve_model
from monitoring import evaluate_drift as ev
from monitoring.drift_evaluation import SHIFT_DESCRIPTIONS
from monitoring.reference import build_reference, load_reference_for_version, log_reference
from tests.support.models import make_tiny_images, register_tiny_model

pytestmark = pytest.mark.slow
NAME = "refund-item-classifier"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Versions 1 and 2 of the model, each with its own reference; version 2 is the champion."""
    root = tmp_path_factory.mktemp("versions")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    v1 = register_tiny_model(uri)
    # Version 2: another training run with its own reference (the same weights are enough here, and save a
    # second TensorFlow training).
    images, _ = make_tiny_images(150, seed=11)
    probs = np.full((150, 10), 0.01, dtype=np.float32)
    probs[:, 4] = 0.91
    with mlflow.start_run(experiment_id=ensure_experiment("tests-v2", uri)) as run:
        log_reference(build_reference(images, probs, source="v2-val"))
    client = MlflowClient(tracking_uri=uri)
    v2 = client.create_model_version(NAME, source=v1.source, run_id=run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", v2.version)
    store = root / "store"
    test_images, test_labels = make_tiny_images(400, seed=12)
    save_split(
        LocalStorage(str(store)), "test", Split(test_images, test_labels, np.array([f"t/{i}" for i in range(400)]))
    )
    return uri, str(store)


def test_each_version_is_checked_against_its_own_reference(two_versions: tuple[str, str]) -> None:
    uri, _ = two_versions
    v1 = load_reference_for_version(NAME, "1", tracking_uri=uri)
    v2 = load_reference_for_version(NAME, "2", tracking_uri=uri)
    assert v1.meta["source"] == "tests" and len(v1) == 128
    assert v2.meta["source"] == "v2-val" and len(v2) == 150
    served = resolve_model(f"models:/{NAME}@champion", uri)
    assert served.version == "2"
    assert load_reference_for_version(served.name, served.version, tracking_uri=uri).meta["source"] == "v2-val"
    # Moving the alias back serves version 1, and with it version 1's reference.
    MlflowClient(tracking_uri=uri).set_registered_model_alias(NAME, "champion", "1")
    try:
        served = resolve_model(f"models:/{NAME}@champion", uri)
        assert load_reference_for_version(served.name, served.version, tracking_uri=uri).meta["source"] == "tests"
    finally:
        MlflowClient(tracking_uri=uri).set_registered_model_alias(NAME, "champion", "2")


def test_evaluation_command_prints_the_table_and_logs_to_mlflow(
    two_versions: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, store = two_versions
    out_json = tmp_path / "eval.json"
    code = ev.main(
        [
            "--model-uri",
            f"models:/{NAME}/1",
            "--tracking-uri",
            uri,
            "--storage-uri",
            store,
            "--window-size",
            "100",
            "--min-window",
            "50",
            "--sizes",
            "50,100",
            "--null-windows",
            "20",
            "--power-windows",
            "10",
            "--log-mlflow",
            "--json",
            str(out_json),
        ]
    )
    out = capsys.readouterr().out
    assert code in (ev.EXIT_OK, ev.EXIT_MISSED)
    assert "false-alarm rate at n=100" in out
    for desc in SHIFT_DESCRIPTIONS.values():
        assert desc in out
    assert "v1" in out
    result = __import__("json").loads(out_json.read_text())
    assert (code == ev.EXIT_OK) is result["all_met"]
    runs = mlflow.search_runs(experiment_names=["drift-evaluation"], output_format="list")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert {"false_alarm_rate", "power_noise", "power_ood", "all_targets_met"} <= set(metrics)
    assert runs[0].data.params["model_version"] == "1"


def test_evaluation_command_usage_and_missing_inputs(two_versions: tuple[str, str], tmp_path: Path) -> None:
    uri, _ = two_versions
    assert ev.main(["--alpha", "2"]) == ev.EXIT_USAGE
    assert ev.main(["--sizes", "a,b"]) == ev.EXIT_USAGE
    empty_store = tmp_path / "empty"
    args = ["--model-uri", f"models:/{NAME}/1", "--tracking-uri", uri, "--storage-uri", str(empty_store)]
    assert ev.main(args) == ev.EXIT_INPUTS  # no processed/test.npz
    assert ev.main(["--model-uri", f"models:/{NAME}/9", "--tracking-uri", uri]) == ev.EXIT_INPUTS
