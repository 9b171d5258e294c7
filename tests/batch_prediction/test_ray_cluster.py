"""``--engine ray`` against a cluster started outside the job (issue 14, item 6): a real ``ray start --head`` with
Ray's token authentication on (a token generated with ``ray get-auth-token --generate``, as Ray ships it), joined
through RAY_ADDRESS; and what the job hands the cluster carries no secrets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from batch_prediction.engines import ray_engine
from batch_prediction.reading import StoreAddress
from common.storage import ObjectInfo, storage_from_settings
from inference.classifier import Thresholds
from tests.support.batch import assert_exactly_once, run_job, run_prefixes, seed_incoming
from tests.support.processes import free_port

pytest.importorskip("ray.data", reason="Ray is optional: pip install -r requirements-ray.txt")
pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Ray turns 127.0.0.1 into the host's outward address (node_ip_address_from_perspective); with multi-node
# clustering off it keeps loopback, so the head, the job and the actors talk over 127.0.0.1 only.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE-session-token",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-example-password",
}


class _Stop(Exception):
    pass


class FakeRay:
    """Just enough of ``ray`` and ``ray.data`` to see what RayEngine hands the cluster, then stop."""

    def __init__(self) -> None:
        self.init_kwargs: dict = {}
        self.map_kwargs: dict = {}
        fake = self

        class _Dataset:
            def map_batches(self, fn, **kwargs):
                fake.map_kwargs = kwargs
                raise _Stop

        class _Context:
            execution_options = type("Options", (), {})()
            enable_progress_bars = True

        class _Data:
            DataContext = type("DataContext", (), {"get_current": staticmethod(lambda: _Context())})

            @staticmethod
            def from_items(items, **kwargs):
                return _Dataset()

        self.data = _Data

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.init_kwargs = kwargs

    def shutdown(self) -> None:
        pass


def test_the_runtime_env_and_task_arguments_carry_no_secrets(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ops:tracking-secret@127.0.0.1:5000/")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = FakeRay()
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake)
    engine = ray_engine.RayEngine(
        store=StoreAddress("s3://bucket/store", "http://127.0.0.1:9000"),
        model=ray_engine.PinnedModel("models:/refund-item-classifier/1", "http://ops:tracking-secret@127.0.0.1:5000/"),
        thresholds=Thresholds(0.7, None),
    )
    with pytest.raises(_Stop):
        list(engine.score([ObjectInfo("incoming/a.png", 10)], 8))
    handed = json.dumps([fake.init_kwargs.get("runtime_env"), fake.map_kwargs.get("fn_constructor_kwargs")])
    for secret in [*SECRETS.values(), "tracking-secret"]:
        assert secret not in handed, f"{secret} reached the cluster"
    env = fake.init_kwargs["runtime_env"]["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"  # settings still travel
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000/"


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0 and "Ray runtime started" in log.read_text():
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not start:\n{log.read_text()[-3000:]}")


@pytest.fixture
def ray_head(tmp_path):
    """One ``ray start --head --block`` on loopback with token auth on; yields (address, HOME of its token)."""
    home = tmp_path / "home"
    home.mkdir()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), **LOOPBACK_ONLY)
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    port = free_port()
    log = tmp_path / "ray-head.log"
    cmd = [
        ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
        f"--temp-dir={temp_dir}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, proc, log)
        assert "Token authentication is enabled" in log.read_text()
        yield f"127.0.0.1:{port}", home
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: the CLI stops the processes it started, then exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this fixture started
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_night_on_a_cluster_started_with_ray_start(night_env, ray_head):
    settings, version = night_env
    address, home = ray_head
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 24, corrupt=2)
    env = {"RAY_ADDRESS": address, "HOME": str(home), **LOOPBACK_ONLY, **SECRETS}
    proc = run_job("--engine", "ray", "--batch-size", "16", "--max-failure-rate", "0.1", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Authentication token is missing" not in proc.stderr
    assert f"Ray cluster at address: {address}" in proc.stderr  # loopback, as asked
    summary = json.loads(storage.get_bytes(f"{run_prefixes(storage)[-1]}/summary.json"))
    assert summary["engine"] == "ray" and (summary["scored"], summary["failed"]) == (24, 2)
    assert summary["this_invocation"]["peak_rss_workers_mb"] > 0  # the actors' own peaks
    assert_exactly_once(storage, good + bad, version)
