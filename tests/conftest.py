"""Fixtures shared by the whole suite: the real Fashion-MNIST copy, free ports, a real moto S3 server
over HTTP, temporary local stores and MLflow stores, and a real ``mlflow server`` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from common.settings import PROJECT_ROOT, Settings

ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of the isolated environment: local store and SQLite MLflow store under tmp_path."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto S3 server process over HTTP on a free loopback port; yields its endpoint URL."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc=proc)
        yield url
    finally:
        stop_process(proc)


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
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        cwd=root,
        # The server's background job workers (huey, ~7 processes) serve GenAI features we do not use.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=300, proc=proc)  # slow to import on a busy 2-core box
        yield url
    finally:
        stop_process(proc)


def make_tiny_images(n: int, seed: int = 0) -> tuple:
    """``n`` small generated 28x28 uint8 'items' (a bright blob whose shape depends on the label)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        h = 6 + 2 * int(label)
        w = 24 - 2 * int(label)
        top, left = (28 - min(h, 26)) // 2, (28 - max(w, 4)) // 2
        images[i, top : top + min(h, 26), left : left + max(w, 4)] = 120 + 10 * int(label)
    noise = rng.integers(0, 20, size=images.shape, dtype=np.uint8)
    return np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


def register_tiny_model(
    tracking_uri: str, model_name: str = "refund-item-classifier", alias: str = "champion", *, export: bool = True
):
    """Train a tiny real Keras CNN for a few steps, log it like training does (with a drift reference and, unless
    ``export=False``, its exported runtime with the parity report) and register it under ``alias``. Returns the
    ModelVersion. For tests of serving/batch/drift that need a real registered model but not a good one."""
    import keras
    import mlflow
    from mlflow import MlflowClient

    from common.tracking import ensure_experiment
    from data_processing.preprocessing import to_model_batch
    from inference.export import export_and_log
    from model_training.model_io import log_keras_model
    from monitoring.reference import build_reference, log_reference

    images, labels = make_tiny_images(256)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x = to_model_batch(images)
    model.fit(x, labels, epochs=3, batch_size=64, verbose=0)
    exp_id = ensure_experiment("tests-tiny-model", tracking_uri)
    with mlflow.start_run(experiment_id=exp_id) as run:
        probs = model.predict(x[:128], verbose=0)
        log_reference(build_reference(images[:128], probs, source="tests"))
        mlflow.log_metric("test_accuracy", 0.1)
        info = log_keras_model(model, x[:2])
        if export:
            split = {"val": (images[:128], labels[:128]), "test": (images[128:], labels[128:])}
            export_and_log(model, split, run.info.run_id, tracking_uri)
    assert run.info.run_id
    mv = mlflow.register_model(info.model_uri, model_name)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(model_name, alias, mv.version)
    return mv


@pytest.fixture
def tiny_champion(settings: Settings):
    """A tiny real model registered as ``refund-item-classifier@champion`` in this test's SQLite store."""
    return register_tiny_model(settings.mlflow_tracking_uri)
