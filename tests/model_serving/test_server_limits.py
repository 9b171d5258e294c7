"""The real server's front (issue 28): memory for buffered bodies and connections bounded, idle floods, chunked
uploads, slow but steady uploads, underscore headers, and one server per port. ``python model_serving/app.py``
with one granian worker on a free loopback port, driven with raw sockets, ``requests`` and ``curl``.

No assertion here is a bound on speed: a flood is shown harmless by the order of events (the probe is answered while
every flooding connection is still open, long before any server timeout could have freed one)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from common.settings import PROJECT_ROOT
from tests.support.api import ServerProcess, encode, item_image, run_server

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
BUFFER_BYTES = 40 * MiB  # the first server's per-worker budget for buffered bodies


@pytest.fixture(scope="module")
def store(_batch_champion_store, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the session's MLflow store holding a tiny champion (registering one costs a minute of CPU)."""
    db, _ = _batch_champion_store
    root = tmp_path_factory.mktemp("limits-store")
    shutil.copyfile(db, root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def patient(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that waits long for headers and bodies: what it holds stays held while a test looks."""
    env = {
        "SERVING_BODY_BUFFER_BYTES": str(BUFFER_BYTES),
        "SERVING_CLIENT_BUFFER_BYTES": str(1024 * MiB),  # all test clients share 127.0.0.1
        "SERVING_MODEL_CACHE": "off",
    }
    args = ("--body-timeout", "120", "--header-timeout", "120")
    with run_server(store, tmp_path_factory.mktemp("patient"), workers=1, extra_env=env, extra_args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def brisk(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose body timeout is 1 s."""
    env = {"SERVING_MODEL_CACHE": "off"}
    args = ("--body-timeout", "1", "--body-min-rate", "16384")
    with run_server(store, tmp_path_factory.mktemp("brisk"), workers=1, extra_env=env, extra_args=args) as srv:
        yield srv


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _worker_rss(server: ServerProcess) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(server.proc.pid).children(recursive=True))


def _first_line(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    except TimeoutError:
        return ""
    except OSError as exc:
        return type(exc).__name__


def test_bodies_a_worker_buffers_are_bounded_in_all(patient):
    # Each client declares 8 MiB and sends all of it but the last byte (120 such clients of 20 MiB took a worker
    # from 575 MB to 3 GB). The worker's budget holds five; the others are told to retry without being read.
    declared, clients = 8 * MiB, 12
    before = _worker_rss(patient)
    socks = [socket.create_connection(_address(patient), timeout=60) for _ in range(clients)]

    def send(sock: socket.socket) -> None:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        try:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % declared)
            sock.sendall(b"x" * (declared - 1))
        except OSError:  # refused: the server answered and closed without reading
            pass

    senders = [threading.Thread(target=send, args=(s,), daemon=True) for s in socks]
    try:
        for t in senders:
            t.start()
        for t in senders:
            t.join(timeout=120)
        answers = [_first_line(s, timeout=2) for s in socks]
        refused = [a for a in answers if a.startswith("HTTP/1.1 503")]
        held = [a for a in answers if a == ""]  # still waiting for their last byte: nothing answered
        assert len(refused) >= clients - BUFFER_BYTES // declared, answers
        assert len(held) == clients - len(refused) and held, answers
        grown = _worker_rss(patient) - before
        assert grown < BUFFER_BYTES + 32 * MiB, f"worker RSS grew by {grown / MiB:.0f} MiB"
    finally:
        for s in socks:
            s.close()
    r = requests.post(f"{patient.url}/predict", files={"file": ("a.png", encode(item_image()))}, timeout=60)
    assert r.status_code == 200  # the budget came back when the held clients left


def test_thousands_of_idle_connections_do_not_lock_out_a_new_client(patient):
    # 2,500 connections that send nothing: above the 2,048 a worker used to serve at once (1,024 with two workers),
    # so new clients waited in the backlog until idle ones timed out.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2500 + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this test process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    flood = []
    try:
        for _ in range(2500):
            flood.append(socket.create_connection(_address(patient), timeout=30))
        r = requests.get(f"{patient.url}/health", timeout=60)
        assert r.status_code == 200
        # Answered while every flooding connection is still open: none was closed to make room (the header timeout
        # is 120 s).
        for s in flood:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # nothing to read: open, as it should be
                assert s.recv(1) != b"", "the server closed an idle connection"
    finally:
        for s in flood:
            s.close()


def test_a_chunked_upload_is_scored(brisk, tmp_path: Path):
    img = encode(item_image())
    r = requests.post(  # a generator body: requests streams it with Transfer-Encoding: chunked
        f"{brisk.url}/predict",
        data=(part for part in _multipart(img)),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "a.png"
    if shutil.which("curl") is None:
        return
    path = tmp_path / "img.png"
    path.write_bytes(img)
    out = subprocess.run(
        ["curl", "-s", "-H", "Transfer-Encoding: chunked", "-F", f"file=@{path}", f"{brisk.url}/predict"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"class_id"' in out.stdout, out.stdout  # was 400 no_file


def _multipart(data: bytes) -> list[bytes]:
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    return [head, data[: len(data) // 2], data[len(data) // 2 :], b"\r\n--b--\r\n"]


def test_a_steady_upload_slower_than_the_body_timeout_is_scored(brisk):
    # A photo sent at 150 KB/s over three seconds, three times the 1 s body timeout: it got 408 on every retry.
    photo = encode(item_image(200, 28))
    body = b"".join(_multipart(photo + bytes(450_000)))  # a PNG's trailing bytes are ignored by its decoder
    sock = socket.create_connection(_address(brisk), timeout=60)
    try:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 15_000):
            sock.sendall(body[i : i + 15_000])
            time.sleep(0.1)
        answer = _first_line(sock, timeout=60)
    finally:
        sock.close()
    assert answer.startswith("HTTP/1.1 200"), answer


def test_headers_with_underscores_do_not_override_the_real_ones(brisk):
    img = encode(item_image())
    body = b"".join(_multipart(img))
    r = requests.post(
        f"{brisk.url}/predict",
        data=body,
        headers={
            "Content-Type": "multipart/form-data; boundary=b",
            "Content_Type": "text/plain",
            "Content_Length": "3",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text  # was 400 no_file: the underscore header replaced the real one


def test_a_second_server_on_a_served_port_fails_at_once(brisk, store: str, tmp_path: Path):
    # It logged "Listening" and took half of the port's connections (SO_REUSEPORT), possibly with another model.
    port = _address(brisk)[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "SERVING_MODEL_CACHE": "off"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, str(PROJECT_ROOT / "model_serving" / "app.py"), "--port", str(port), "--workers", "1"]
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0], out
    pids = {requests.get(f"{brisk.url}/health", timeout=10).json()["pid"] for _ in range(20)}
    workers = {c.pid for c in psutil.Process(brisk.proc.pid).children()}
    assert pids <= workers  # every answer still comes from the first server
