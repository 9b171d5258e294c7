"""The whole pipeline on a small slice, against a real moto S3 server over HTTP and a real ``mlflow server``.

ingest -> process -> train (tiny) -> promote -> serve (real granian process, the seed's curl command) ->
simulated night -> batch -> drift status. Every stage runs as its script, in a subprocess, the way an
operator runs it; every service is started and stopped by the test on free loopback ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import boto3
import pytest
import requests

from common.settings import PROJECT_ROOT
from common.storage import open_storage
from tests.support.processes import free_port, stop_process, wait_http

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_pipeline_end_to_end_on_moto_and_mlflow_servers(moto_server, mlflow_server, fmnist_dir, tmp_path):
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    storage_uri = f"s3://{bucket}/returns"
    env = {
        **os.environ,
        "STORAGE_URI": storage_uri,
        "AWS_ENDPOINT_URL": moto_server,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "DATA_DIR": str(tmp_path / "data"),
        "FASHION_MNIST_DIR": str(fmnist_dir),
        "PYTHONUNBUFFERED": "1",
    }

    # Data: 20 images per class per split, through S3.
    _run(["data_ingestion/acquire.py", "--limit-per-class", "20"], env)
    ingest = _run(["data_ingestion/ingest.py", "--create-bucket"], env)
    assert "uploaded 400, skipped 0, failed 0" in ingest.stdout + ingest.stderr  # 200 train + 200 test
    _run(["data_processing/process.py"], env)
    storage = open_storage(storage_uri, endpoint_url=moto_server)
    keys = {info.key for info in storage.list("processed/")}
    assert {"processed/train.npz", "processed/val.npz", "processed/test.npz"} <= keys

    # Train a tiny model; it becomes champion because there is none yet.
    # (the unfamiliarity head's photo sets kept small: at the defaults they are ~1,900 more photos to render)
    _run(["model_training/train.py", "--arch", "tiny", "--epochs", "1", "--limit", "200", "--set",
          "unfamiliar_train_per_kind=5", "--set", "unfamiliar_val_per_kind=5", "--set", "unfamiliar_fit_per_class=2"],
         env)  # fmt: skip
    listing = _run(["-m", "model_training.registry", "list"], env).stdout
    assert "champion" in listing

    # Serve it with the production server, and call it with the seed's curl command.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "model_serving/app.py", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=open(tmp_path / "server.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", timeout=180, proc=server)
        for _ in range(600):
            health = requests.get(f"{base}/health", timeout=5)
            if health.status_code == 200:
                break
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
        assert health.status_code == 200, health.text
        version = health.json()["model"]["version"]

        test_png = sorted((tmp_path / "data" / "processed" / "test").glob("*.png"))[0]
        curl = subprocess.run(
            ["curl", "-sS", "-X", "POST", "-F", f"file=@{test_png}", f"{base}/predict"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        body = json.loads(curl.stdout)
        assert body["class_name"] and 0.0 <= body["confidence"] <= 1.0
        assert body["model_version"] == version

        # A simulated night, scored by the batch job; a rerun has nothing new and writes nothing.
        _run(["-m", "batch_prediction.simulate_night", "--count", "30", "--seed", "1"], env)
        _run(["batch_prediction/batch_predict.py"], env)
        success = [i.key for i in storage.list("predictions/") if i.key.endswith("/_SUCCESS")]
        assert len(success) == 1
        summary = json.loads(storage.get_bytes(success[0].rsplit("/", 1)[0] + "/summary.json"))
        assert (summary["scored"], summary["failed"], summary["model"]["version"]) == (30, 0, version)
        rerun = _run(["batch_prediction/batch_predict.py"], env)
        assert "nothing new under incoming/ for refund-item-classifier" in rerun.stderr
        assert "30 input(s) already scored; no output folder, no MLflow run" in rerun.stderr
        summaries = [i.key for i in storage.list("predictions/") if i.key.endswith("summary.json")]
        assert len(summaries) == 1

        # The API's drift view is computed against the served version's own reference.
        drift = requests.get(f"{base}/drift-status", timeout=30).json()
        assert drift["model_version"] == version
        assert drift["status"] in {"ok", "drift", "insufficient_data"}
        assert drift["reference_size"] > 0
    finally:
        stop_process(server, timeout=60)
        boto3.resource("s3", endpoint_url=moto_server, region_name="us-east-1").Bucket(bucket).objects.all().delete()
    assert shutil.which("curl")
