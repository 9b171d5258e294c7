"""Import direction, checked by import-linter on the real tree: the contracts hold, and they do catch a break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common.settings import PROJECT_ROOT
from tests.support.project import PACKAGES

SCRIPTS = (
    "data_ingestion.acquire",
    "data_ingestion.ingest",
    "data_processing.process",
    "inference.export",
    "model_training.train",
    "model_training.registry",
    "model_training.render_photos",
    "model_training.fit_segmenter",
    "model_training.retrain_policy",
    "batch_prediction.batch_predict",
    "batch_prediction.simulate_night",
    "monitoring.evaluate_drift",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_project_keeps_its_import_contracts():
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "inference imports only common and data_processing KEPT" in result.stdout


def test_the_contracts_catch_an_import_that_runs_the_wrong_way(tmp_path):
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    for script in SCRIPTS:  # the contracts name them: they must exist
        package, module = script.split(".")
        (tmp_path / package / f"{module}.py").write_text("")
    (tmp_path / "inference" / "loading.py").write_text("def f():\n    from model_serving import app\n")
    (tmp_path / "model_serving" / "app.py").write_text("")
    (tmp_path / "batch_prediction" / "engine.py").write_text("import model_serving.app\n")
    (tmp_path / "data_ingestion" / "ingest.py").write_text("from data_processing import dataset\n")  # a level up
    (tmp_path / "data_processing" / "dataset.py").write_text("")
    (tmp_path / "data_processing" / "process.py").write_text("from data_ingestion import ingest\n")  # a script
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "inference imports only common and data_processing BROKEN" in result.stdout
    assert "no other package imports model_serving BROKEN" in result.stdout
    assert "inference.loading -> model_serving" in result.stdout
    assert "data_ingestion is not allowed to import data_processing" in result.stdout
    assert "no module imports a stage script (scripts only wire library modules) BROKEN" in result.stdout
