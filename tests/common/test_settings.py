"""The one settings object: every variable typed and grouped, bad values named, secrets masked, and no project
setting read anywhere else."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from common.settings import BatchSettings, LearningSettings, ServingSettings, Settings, TrainingSettings, describe
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
        (
            {"SERVING_RUNTIME": "tensorrt"},
            "SERVING_RUNTIME must be one of auto, exported, keras, litert-int8, onnx, litert, got 'tensorrt'",
        ),
        ({"BATCH_RUNTIME": "tensorrt"}, "BATCH_RUNTIME must be one of auto, exported, keras"),
        ({"CPU_ASSUME": "avx9"}, "CPU_ASSUME must be one of avx2, got 'avx9'"),
        ({"SERVING_WORKERS": "-1"}, "SERVING_WORKERS must be > 0, got '-1'"),
    ],
)
def test_a_bad_value_is_refused_with_its_variables_name(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)


def test_every_field_has_a_variable_and_the_listing_masks_secrets():
    for group in (Settings, ServingSettings, TrainingSettings, BatchSettings, LearningSettings):
        for f in fields(group):
            if f.name not in ("serving", "training", "batch", "learning"):
                assert f.metadata.get("env") and f.metadata.get("doc"), f"{group.__name__}.{f.name}"
    rows = {name: value for name, value, _ in describe(Settings.from_env({"ADMIN_TOKEN": "hunter2"}))}
    assert rows["ADMIN_TOKEN"] == "***" and "hunter2" not in str(rows)
    out = subprocess.run(
        [sys.executable, "-m", "common.list_settings"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SERVING_PORT": "x"},
    )
    assert out.returncode == 2 and "SERVING_PORT must be an integer" in out.stderr


def test_every_invalid_variable_is_reported_at_once_each_by_its_name():
    # Each was accepted (rc 0), reported only if it came first, or refused without its name (SERVING_WORKERS).
    env = {
        "DRIFT_ALPHA": "2",
        "LOG_LEVEL": "LOUD",
        "STORAGE_URI": "s3://",
        "SERVING_WORKERS": "-1",
        "SERVING_PORT": "70000",
        "MLFLOW_TRACKING_URI": "ftp://host/mlflow",
        "AWS_ENDPOINT_URL": "localhost:9000",
        "MODEL_URI": "models:/no-alias-or-version",
        "BATCH_INPUT_PREFIX": "/incoming",
        "TRAIN_EPOCHS": "0",
        "DRIFT_MIN_WINDOW": "x",
    }
    with pytest.raises(ValueError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert [name for name in env if name not in message] == []
    for good in ("s3://bucket/prefix", "/srv/store", "file:///srv/store"):
        assert Settings.from_env({"STORAGE_URI": good}).storage_uri == good
    for good in ("sqlite:///mlflow.db", "http://u:p@host:5000", "postgresql+psycopg2://db/mlflow", "./mlruns"):
        assert Settings.from_env({"MLFLOW_TRACKING_URI": good}).mlflow_tracking_uri == good
    assert Settings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_a_rule_between_two_variables_names_both():
    with pytest.raises(ValueError, match=r"DRIFT_MIN_WINDOW .*DRIFT_WINDOW_SIZE"):
        Settings.from_env({"DRIFT_MIN_WINDOW": "600", "DRIFT_WINDOW_SIZE": "500"})


def test_the_listing_masks_credentials_in_uris_and_shows_effective_defaults(monkeypatch, capsys):
    from common.list_settings import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ops:hunter2@mlflow.internal:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:s3cr3t@minio.internal:9000")
    for name in ("TRAIN_EPOCHS", "LOG_LEVEL", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cr3t" not in out and "ops" not in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "mlflow.internal:5000" in rows["MLFLOW_TRACKING_URI"]
    assert rows["MLFLOW_UI_URL"].split()[1] == "http://mlflow.internal:5000"  # the server is its UI, no password
    assert rows["TRAIN_EPOCHS"].split()[1] == "(44)"  # was blank: the recipe decides, and the listing says what
    assert rows["LOG_LEVEL"].split()[1] == "(INFO,"
    assert rows["MLFLOW_EXPERIMENT_NAME"].split()[1] == "refund-item-classifier"


def test_shown_defaults_are_the_ones_the_code_uses():
    # The settings module sits below the recipe and the preprocessing; what it shows for an unset variable must
    # stay what they decide.
    from data_processing import preprocessing as pp
    from model_training.config import DEFAULT_EXPERIMENT, TrainConfig

    recipe = TrainConfig()
    for f in fields(TrainingSettings):
        if f.metadata.get("shown") is not None:
            assert f.metadata["shown"] == str(getattr(recipe, f.name)), f.name
    assert TrainingSettings().experiment == DEFAULT_EXPERIMENT
    shown = {f.name: f.metadata.get("shown") for f in fields(ServingSettings)}
    assert shown["max_pixels"] == str(pp.MAX_PIXELS) and shown["max_decode_pixels"] == str(pp.MAX_DECODE_PIXELS)
    assert shown["max_request_pixels"] == str(pp.MAX_REQUEST_PIXELS)
    assert shown["decode_seconds"] == str(pp.REQUEST_DECODE_SECONDS)


def test_another_stages_bad_variable_breaks_neither_a_command_nor_a_help(monkeypatch, capsys):
    from model_training import registry, train

    monkeypatch.setenv("SERVING_WORKERS", "-1")  # a serving variable: training and the registry never read it
    assert registry.main(["list"]) != 2
    assert "SERVING_WORKERS" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0 and "--epochs" in capsys.readouterr().out

    monkeypatch.setenv("TRAIN_EPOCHS", "many")  # its own bad variable: --help still works, a run is refused
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0
    capsys.readouterr()
    monkeypatch.setenv("TRAIN_ARCH", "resnet")  # a choice only the training script knows
    assert train.main(["--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "TRAIN_EPOCHS must be an integer, got 'many'" in err and "TRAIN_ARCH must be one of" in err
    assert "SERVING_WORKERS" not in err


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
    root = Path(__file__).resolve().parents[2]
    offenders = [
        f"{path.relative_to(root)}:{number}: {line}"
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        if path.relative_to(root).as_posix() != "common/settings.py"
        for number, line in _env_reads(path.read_text())
    ]
    assert offenders == []


def test_learning_loop_settings_are_read_and_checked():
    loop = Settings.from_env({"AUDIT_SHARE": "0.05", "AUDIT_MAX": "50", "WAREHOUSE_SPLIT": "0.8,0.1,0.1"}).learning
    assert (loop.audit_share, loop.audit_min, loop.audit_max, loop.warehouse_split) == (0.05, 20, 50, "0.8,0.1,0.1")
    bad = {
        "AUDIT_SHARE": ({"AUDIT_SHARE": "2"}, "AUDIT_SHARE must be in [0, 1], got '2'"),
        "AUDIT_MIN": ({"AUDIT_MIN": "30", "AUDIT_MAX": "10"}, "AUDIT_MIN (30) must be <= AUDIT_MAX (10)"),
        "WAREHOUSE_SPLIT": ({"WAREHOUSE_SPLIT": "0.5,0.5"}, "WAREHOUSE_SPLIT must be three shares train,val,test"),
        "RETRAIN_MIN_LABELS": ({"RETRAIN_MIN_LABELS": "0"}, "RETRAIN_MIN_LABELS must be > 0"),
    }
    for env, message in bad.values():
        with pytest.raises(ValueError, match=re.escape(message)):
            Settings.from_env(env)
        # Another stage's group: a command that does not use the learning loop ignores it.
        assert Settings.from_env(env, groups=("serving",)).learning == LearningSettings()
