"""The one settings object: every variable typed and grouped, bad values named, secrets masked, and no project
setting read anywhere else."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from common.settings import BatchSettings, ServingSettings, Settings, TrainingSettings, describe
from tests.support.project import PACKAGES


def test_every_group_reads_its_variables_with_their_types():
    env = {
        "DATA_DIR": "/tmp/ric-data",
        "REVIEW_THRESHOLD": "0.4",
        "SERVING_PORT": "8080",
        "MODEL_POLL_SECONDS": "2.5",
        "SERVING_RUNTIME_DIR": "/tmp/ric-runtime",
        "TRAIN_EPOCHS": "3",
        "BATCH_MAX_OBJECT_BYTES": "1024",
        "RAY_ADDRESS": "",  # empty counts as unset
    }
    s = Settings.from_env(env)
    assert s.data_dir == Path("/tmp/ric-data") and s.storage_uri == "/tmp/ric-data/store"  # a derived default
    assert s.review_threshold == 0.4 and s.model_uri == "models:/refund-item-classifier@champion"
    assert (
        s.serving.port == 8080 and s.serving.poll_seconds == 2.5 and s.serving.runtime_dir == Path("/tmp/ric-runtime")
    )
    assert s.training.epochs == 3 and s.training.batch_size is None  # unset: the recipe's own default
    assert s.batch.max_object_bytes == 1024 and s.batch.ray_address is None
    assert Settings.from_env({}).serving == ServingSettings() and Settings.from_env({}).batch == BatchSettings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVING_PORT": "http"}, "SERVING_PORT must be an integer, got 'http'"),
        ({"DRIFT_ALPHA": "five"}, "DRIFT_ALPHA must be a number"),
        ({"REVIEW_THRESHOLD": "1.5"}, "REVIEW_THRESHOLD must be in [0, 1]"),
        ({"SERVING_RUNTIME": "tensorrt"}, "SERVING_RUNTIME must be one of auto, exported, keras, litert-int8"),
        ({"BATCH_RUNTIME": "tensorrt"}, "BATCH_RUNTIME must be one of auto, exported, keras"),
        ({"CPU_ASSUME": "avx9"}, "CPU_ASSUME must be avx2 or unset"),
        ({"SERVING_WORKERS": "0"}, "workers must be positive"),
    ],
)
def test_a_bad_value_is_refused_with_its_variables_name(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)


def test_every_field_has_a_variable_and_the_listing_masks_secrets():
    for group in (Settings, ServingSettings, TrainingSettings, BatchSettings):
        for f in fields(group):
            if f.name not in ("serving", "training", "batch"):
                assert f.metadata.get("env") and f.metadata.get("doc"), f"{group.__name__}.{f.name}"
    rows = {name: value for name, value, _ in describe(Settings.from_env({"ADMIN_TOKEN": "hunter2"}))}
    assert rows["ADMIN_TOKEN"] == "***" and "hunter2" not in str(rows)
    out = subprocess.run(
        [sys.executable, "-m", "common.settings"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SERVING_PORT": "x"},
    )
    assert out.returncode == 2 and "SERVING_PORT must be an integer" in out.stderr


# A project module may touch the process environment only for a library's own variable: prometheus_client's
# multiprocess directory (read by the metrics module, set by the server for its workers), TensorFlow's and
# MLflow's (``setdefault``, never read back). Everything the project itself reads goes through common/settings.py.
_ENV_READ = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=)|environ\.copy\(\)")
_LIBRARY_VARIABLES = re.compile(
    r"MULTIPROC_ENV|PROMETHEUS_MULTIPROC_DIR|TF_CPP_MIN_LOG_LEVEL|TF_ENABLE_ONEDNN_OPTS|ONEDNN_MAX_CPU_ISA|MLFLOW_[A-Z_]+"
)


def _env_reads(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if _ENV_READ.search(line) and not _LIBRARY_VARIABLES.search(line) and not line.lstrip().startswith("#")
    ]


def test_the_env_read_check_catches_each_way_of_reading_a_variable():
    sample = "\n".join(
        [
            'a = os.environ.get("TRAIN_EPOCHS")',
            'b = os.getenv("MODEL_URI", "")',
            'c = os.environ["BATCH_INPUT_PREFIX"]',
            'os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)',  # a library's variable, set for it
            'os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")',
        ]
    )
    assert [n for n, _ in _env_reads(sample)] == [1, 2, 3]


def test_no_module_reads_a_project_setting_outside_the_settings_module():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        f"{path.relative_to(root)}:{number}: {line}"
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        if path.relative_to(root).as_posix() != "common/settings.py"
        for number, line in _env_reads(path.read_text())
    ]
    assert offenders == []
