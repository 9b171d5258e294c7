"""The suite's fixtures (and only fixtures: plain helpers live in ``tests.support``): the real Fashion-MNIST copy,
an isolated environment per test, temporary local and MLflow stores, a real moto S3 server over HTTP, a real
``mlflow server`` process and registered tiny champions."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.hardware import detect_cpu, onednn_enabled
from common.settings import PROJECT_ROOT, Settings
from tests.support import processes
from tests.support.models import register_tiny_model


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The four original IDX files (FASHION_MNIST_DIR; CI sets it to ../shared/data/fashion-mnist)."""
    configured = os.environ.get("FASHION_MNIST_DIR")
    path = Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "data" / "fashion-mnist"
    if not (path / "train-labels-idx1-ubyte.gz").is_file():
        if configured:
            pytest.fail(f"FASHION_MNIST_DIR={configured} does not hold the Fashion-MNIST IDX files")
        pytest.skip("no local Fashion-MNIST copy (set FASHION_MNIST_DIR)")
    return path.resolve()


# What TensorFlow does in this process by itself: training runs inside a test report it instead of timing oneDNN
# both ways in child processes (tests/common/test_hardware.py and test_training_run's AVX2 run test that path).
_ONEDNN_AS_STARTED = "1" if onednn_enabled(detect_cpu(), dict(os.environ)) else "0"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test touches the developer's data/, mlflow.db or real AWS account by accident."""
    for var in (
        "STORAGE_URI",
        "AWS_ENDPOINT_URL",
        "MLFLOW_TRACKING_URI",
        "MODEL_URI",
        "DATA_DIR",
        "AWS_PROFILE",
        "CPU_ASSUME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", _ONEDNN_AS_STARTED)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of the isolated environment: local store and SQLite MLflow store under tmp_path."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto S3 server process over HTTP on a free loopback port; yields its endpoint URL."""
    with processes.moto_server() as url:
        yield url


@pytest.fixture
def s3_uri(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server; AWS_ENDPOINT_URL and STORAGE_URI point at it."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    uri = f"s3://{bucket}/store"
    monkeypatch.setenv("STORAGE_URI", uri)
    return uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` process (SQLite backend, proxied artifacts) on a free loopback port."""
    with processes.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def tiny_champion(settings: Settings):
    """A tiny real model registered as ``refund-item-classifier@champion`` in this test's SQLite store."""
    return register_tiny_model(settings.mlflow_tracking_uri)


# One tiny registered champion per session, copied into each batch test's own MLflow store: registering (train +
# log + export + register) costs seconds of CPU, and the batch tests only need to *read* a model. It computes the
# unfamiliarity score and carries its threshold, as a trained champion does (issue 27).
@pytest.fixture(scope="session")
def _batch_champion_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("batch-champion")
    mv = register_tiny_model(f"sqlite:///{root / 'mlflow.db'}", unfamiliarity=True)
    return root / "mlflow.db", str(mv.version)


@pytest.fixture
def night_env(_batch_champion_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    """This test's Settings with a private copy of an MLflow store holding ``refund-item-classifier@champion``;
    returns (settings, champion version). Model artifacts stay in the session folder (read only)."""
    db, version = _batch_champion_store
    shutil.copyfile(db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return Settings.from_env(), version


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """End a run that skipped the browser tests with one line naming them and why (after pytest's own summary), so
    a local ``make test`` that could not install Chromium says what it did not check."""
    yield
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in getattr(r, "keywords", {})]
    if skipped:
        from tests.support.dashboard import CHROMIUM

        names = sorted({r.nodeid.split("::")[-1] for r in skipped})
        terminalreporter.write_line(
            f"NOT RUN: {len(skipped)} browser test(s) ({', '.join(names)}): {CHROMIUM} is absent; install Debian's "
            "`chromium` (`make test` does so when run as root with apt-get, as .ci/run does)",
            yellow=True,
            bold=True,
        )
