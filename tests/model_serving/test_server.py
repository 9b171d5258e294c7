"""The real server: ``python model_serving/app.py`` (granian, 2 workers) on a free loopback port, serving a tiny
real Keras champion (through its exported runtime) from a SQLite MLflow store. Exercised with ``requests``, raw
sockets (clients that stall) and the seed's ``curl`` command.

The tests share one server (starting two workers is the expensive part) and run in file order: the hot-swap test
registers a new champion, and the SIGTERM test stops the server, so they come last."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.api import ServerProcess, bad_upload_corpus, encode, item_image, run_server
from tests.support.models import register_tiny_model

pytestmark = pytest.mark.slow
BODY_TIMEOUT = 2  # seconds a request body may take (the server's --body-timeout)


def _stall(url: str, n: int, declared: int = 1_000_000) -> list[socket.socket]:
    """``n`` clients that send headers announcing ``declared`` body bytes, send 6 of them, then go silent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\nabcdef" % declared
        )
        socks.append(s)
    return socks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serving-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # register_tiny_model's MLflow calls follow the environment
    try:
        register_tiny_model(uri)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    yield uri


@pytest.fixture(scope="module")
def server(store: str, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(
        store,
        tmp_path_factory.mktemp("server"),
        extra_env={"ADMIN_TOKEN": "test-token", "SERVING_MODEL_CACHE": str(cache_dir)},
        extra_args=("--body-timeout", str(BODY_TIMEOUT)),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's server keeps its local copy of the champion."""
    return tmp_path_factory.mktemp("model-cache")


def _post(url: str, data: bytes, name: str = "img.png", field: str = "file", session=requests) -> requests.Response:
    return session.post(f"{url}/predict", files={field: (name, data)}, timeout=60)


def _metrics(url: str) -> dict:
    r = requests.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200
    return r.json()


def test_health_reports_the_registered_champion(server):
    body = requests.get(f"{server.url}/health", timeout=10).json()
    assert body["ready"] is True and body["status"] == "healthy"
    assert body["model"]["name"] == "refund-item-classifier" and body["model"]["version"] == "1"
    assert body["model"]["alias"] == "champion" and body["model"]["drift_reference"] is True
    # The tiny champion carries exported runtimes that passed parity: the API answers through the one that was
    # fastest on this CPU at batch 1 (the Keras graph among the candidates), and says so.
    choice = body["model"]["runtime_choice"]
    assert body["model"]["fallback_reason"] is None and choice["path"] == "api" and choice["batch"] == 1
    assert choice["chosen"] == min(choice["timings_ms"], key=choice["timings_ms"].get)
    assert {"litert-int8", "onnx", "litert", "keras-graph"} == set(choice["timings_ms"]) and choice["reason"]


def test_seed_curl_command_works(server, tmp_path: Path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    img = tmp_path / "img.png"
    img.write_bytes(encode(item_image(220)))
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-F", f"file=@{img}", f"{server.url}/predict"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    import json

    body = json.loads(out.stdout)
    assert 0 <= body["class_id"] < 10 and 0 < body["confidence"] <= 1
    assert body["model_version"] == "1" and body["filename"] == "img.png"


def test_several_files_in_one_request(server):
    files = [("files", (f"{i}.png", encode(item_image(v)))) for i, v in enumerate((120, 180, 240))]
    r = requests.post(f"{server.url}/predict", files=files, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 3 and [p["filename"] for p in body["predictions"]] == ["0.png", "1.png", "2.png"]
    for p in body["predictions"]:
        assert sum(t["confidence"] for t in p["top3"]) <= 1.0 + 1e-6


def test_bad_uploads_never_5xx(server):
    for case in bad_upload_corpus():
        r = _post(server.url, case.data, case.filename)
        assert r.status_code in case.expected, (case.name, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        if case.code:
            assert r.json()["error"] == case.code
    rng = np.random.default_rng(7)
    for i in range(60):  # arbitrary bytes, some with a real image signature in front
        head = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"BM"][i % 5]
        r = _post(server.url, head + rng.bytes(int(rng.integers(0, 3000))))
        assert r.status_code < 500, r.text


def test_oversized_body_is_413(server):
    body = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)  # over the 20 MiB default limit
    try:
        r = _post(server.url, body)
    except requests.ConnectionError:  # the server may answer and close before the client finished sending
        pytest.fail("the server closed the connection without answering 413")
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_concurrent_requests_are_all_answered_and_counted_exactly(server):
    before = _metrics(server.url)
    ok_before = sum(r["count"] for r in before["requests"] if r["endpoint"] == "/predict" and r["status"] == 200)
    preds_before = before["predictions"]["total"]
    payloads = [encode(item_image(v)) for v in range(100, 250, 10)]

    def client(k: int) -> list[int]:
        with requests.Session() as s:  # keep-alive, like a real client script
            return [_post(server.url, payloads[(k + i) % len(payloads)], session=s).status_code for i in range(250)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [code for codes in pool.map(client, range(8)) for code in codes]
    assert len(statuses) == 2000 and set(statuses) == {200}
    after = _metrics(server.url)
    ok_after = sum(r["count"] for r in after["requests"] if r["endpoint"] == "/predict" and r["status"] == 200)
    assert ok_after - ok_before == 2000
    assert after["predictions"]["total"] - preds_before == 2000
    assert sum(after["predictions"]["per_class"].values()) == after["predictions"]["total"]
    assert after["workers"] == 2  # both processes' files were merged
    assert after["requests_per_minute"] > 0  # (a sliding minute: how many depends on the machine's speed)
    lat = after["latency"]["/predict"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert after["process"]["cpu_percent"] > 0 and after["process"]["rss_bytes"] > 0


def test_prometheus_text_parses_and_agrees_with_json(server):
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(f"{server.url}/metrics?format=prometheus", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    scored = sum(s.value for s in families["ric_predictions"].samples if s.name == "ric_predictions_total")
    assert scored == _metrics(server.url)["predictions"]["total"] > 0
    pids = {s.labels["pid"] for s in families["ric_process_rss_bytes"].samples}
    assert len(pids) == 2
    r2 = requests.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}, timeout=30)
    assert r2.headers["Content-Type"].startswith("text/plain")


def test_drift_status_of_the_served_version(server):
    body = requests.get(f"{server.url}/drift-status", timeout=60).json()
    assert body["model_version"] == "1"
    # The concurrent test scored 2000 items, shared across both workers' window segments.
    assert body["window_size"] == 500 and body["reference_size"] == 128
    assert body["status"] in ("ok", "drift") and body["tests"]


def test_the_seed_batch_client_works_unchanged(server, tmp_path: Path):
    """The seed system's own batch client: one ``file`` part per PNG of a folder, reading ``predicted_class``."""
    from common.labels import CLASS_NAMES

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, level in enumerate(range(100, 250, 25)):
        (folder / f"return-{i}.png").write_bytes(encode(item_image(level)))
    predicted = {}
    for path in sorted(folder.glob("*.png")):
        with open(path, "rb") as fh:
            result = requests.post(f"{server.url}/predict", files={"file": fh}, timeout=60).json()
        predicted[path.name] = result["predicted_class"]
        assert result["predicted_class"] == result["class_id"]
        assert 0 < result["processing_time"] < 60 and result["requests_per_minute"] >= 1
    assert len(predicted) == 6 and all(0 <= c < len(CLASS_NAMES) for c in predicted.values())
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "healthy"
    metrics = _metrics(server.url)
    assert 0 <= metrics["cpu_usage"] <= 100 and 0 < metrics["memory_usage"] <= 100
    assert metrics["requests_per_minute"] >= 6
    drift = requests.get(f"{server.url}/drift-status", timeout=60).json()
    assert drift["status"] in ("ok", "drift", "insufficient_data")
    for key in ("current_distribution", "baseline_distribution"):
        assert list(drift[key]) == list(CLASS_NAMES) and sum(drift[key].values()) == pytest.approx(1.0, abs=1e-4)


UNREACHABLE = "http://user:secret@127.0.0.1:9/"  # nothing listens on port 9; the URI carries credentials


def test_a_start_without_the_registry_serves_the_cached_champion(server, cache_dir: Path, tmp_path: Path):
    with run_server(
        UNREACHABLE, tmp_path, workers=1, extra_env={"SERVING_MODEL_CACHE": str(cache_dir)}, ready=False
    ) as cold:
        import time

        deadline = time.monotonic() + 120
        # Ready from the cache first, then the registry check says it is unreachable.
        while (r := requests.get(f"{cold.url}/health", timeout=10)).json().get("error") != "registry_unreachable":
            assert time.monotonic() < deadline, cold.log()
            time.sleep(0.2)
        body = r.json()
        assert r.status_code == 200 and body["model"]["source"] == "cache" and body["model"]["version"] == "1"
        assert body["model"]["drift_reference"] is True
        assert "secret" not in r.text
        assert _post(cold.url, encode(item_image())).json()["model_version"] == "1"
        assert "secret" not in cold.log()  # the log has the details, with credentials masked


def test_a_start_without_registry_or_cache_says_why_at_once(tmp_path: Path):
    with run_server(
        UNREACHABLE, tmp_path, workers=1, extra_env={"SERVING_MODEL_CACHE": str(tmp_path / "empty")}, ready=False
    ) as cold:
        r = requests.get(f"{cold.url}/health", timeout=10)  # answered while the registry is still being tried
        assert r.status_code == 503 and r.json()["status"] in ("loading", "error") and "secret" not in r.text
        import time

        deadline = time.monotonic() + 120
        while requests.get(f"{cold.url}/health", timeout=10).json().get("error") is None:
            assert time.monotonic() < deadline, cold.log()
            time.sleep(0.2)
        body = requests.get(f"{cold.url}/health", timeout=10).json()
        assert body["error"] == "registry_unreachable" and body["ready"] is False and "secret" not in str(body)


def test_a_respawned_worker_serves_from_its_first_request(server):
    # A worker that dies is started again; it answered 503 model_not_ready for ~3 s while it loaded its model. Now it
    # serves its local copy of the champion before it takes a request.
    import time

    before = {requests.get(f"{server.url}/health", timeout=10).json()["pid"] for _ in range(20)}
    os.kill(min(before), signal.SIGKILL)
    answers: list[tuple[int, int]] = []
    deadline = time.monotonic() + 120
    while sum(pid not in before for pid, _ in answers) < 20:
        assert time.monotonic() < deadline, server.log()
        try:
            r = requests.get(f"{server.url}/health", timeout=30)
        except requests.ConnectionError:  # queued on the killed worker's socket when it died: reset
            continue
        answers.append((r.json()["pid"], r.status_code))
    assert {status for pid, status in answers if pid not in before} == {200}, answers


def test_new_champion_is_picked_up_without_restart(server, store):
    from mlflow import MlflowClient

    # A new registered version (same run and artifacts: no second training needed) becomes the champion.
    client = MlflowClient(tracking_uri=store)
    v1 = client.get_model_version("refund-item-classifier", "1")
    mv = client.create_model_version("refund-item-classifier", v1.source, run_id=v1.run_id)
    client.set_registered_model_alias("refund-item-classifier", "champion", mv.version)
    assert str(mv.version) == "2"
    assert requests.post(f"{server.url}/admin/reload", timeout=120).status_code == 401
    r = requests.post(f"{server.url}/admin/reload", headers={"Authorization": "Bearer test-token"}, timeout=120)
    assert r.status_code == 202 and r.json()["requested"] is True  # the workers' watchers do the loading
    # The other worker follows the reload signal within about a second (it loads the model first).
    import time

    deadline = time.monotonic() + 120
    seen: dict[int, str] = {}
    while time.monotonic() < deadline:
        h = requests.get(f"{server.url}/health", timeout=10).json()
        seen[h["pid"]] = h["model"]["version"]
        if len(seen) == 2 and set(seen.values()) == {"2"}:
            break
        time.sleep(0.2)
    assert len(seen) == 2 and set(seen.values()) == {"2"}, seen
    assert _post(server.url, encode(item_image())).json()["model_version"] == "2"


def test_stalled_clients_cost_a_connection_each_not_the_api(server):
    socks = _stall(server.url, 40)
    try:
        for _ in range(5):
            # The bound: with a blocking WSGI server every /health timed out (5-15 s) behind such clients.
            assert requests.get(f"{server.url}/health", timeout=1).status_code == 200
        assert _post(server.url, encode(item_image())).status_code == 200
        # Each stalled client gets the API's JSON answer once its body is overdue, and nothing else waited for it.
        socks[0].settimeout(BODY_TIMEOUT + 30)
        answer = socks[0].recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 408") and '"error":"request_timeout"' in answer
    finally:
        for s in socks:
            s.close()


def test_a_declared_oversized_body_is_refused_without_reading_it(server):
    (sock,) = _stall(server.url, 1, declared=500 * 1024 * 1024)  # 500 MiB announced, 6 bytes sent
    try:
        sock.settimeout(30)
        answer = sock.recv(65536).decode("latin-1")
    finally:
        sock.close()
    assert answer.startswith("HTTP/1.1 413") and '"error":"body_too_large"' in answer


def test_sigterm_answers_requests_in_flight(server):
    # Slow but legitimate requests: 5-megapixel PNGs take a while to decode and preprocess.
    yy, xx = np.mgrid[0:2000, 0:2500]
    big = ((xx // 40 + yy // 40) % 2 * 180 + 40).astype(np.uint8)
    payload = encode(big)
    results: list[int | str] = []
    started = threading.Barrier(7)

    def slow_request() -> None:
        started.wait()
        try:
            results.append(_post(server.url, payload, "big.png").status_code)
        except requests.RequestException as exc:
            results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=slow_request) for _ in range(6)]
    stalled = _stall(server.url, 10)  # and clients that stall: they must not hold the shutdown up
    for t in threads:
        t.start()
    started.wait()
    _wait_until_in_flight(server, 16)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=300)
    for s in stalled:
        s.close()
    assert results == [200] * 6, results
    assert server.proc.wait(timeout=120) == 0
    assert "Shutting down" in server.log()


def _wait_until_in_flight(server: ServerProcess, n: int) -> None:
    """Until the server has accepted ``n`` connections (seen from the socket table), so they are in flight."""
    import time

    import psutil

    port = int(server.url.rsplit(":", 1)[1])
    pids = {server.proc.pid, *(c.pid for c in psutil.Process(server.proc.pid).children())}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        established = 0
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            established += sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")
        if established >= n:
            time.sleep(0.3)  # let the workers start reading the bodies
            return
        time.sleep(0.05)
