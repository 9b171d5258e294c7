"""The nightly job without its registry (issue 14, item 4's last clause): it exits 3 at once with a clear message
and no credentials, instead of retrying for minutes inside MLflow's HTTP client."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from common.storage import storage_from_settings
from tests.support.batch import run_job, run_prefixes, seed_incoming
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


class _Unavailable(BaseHTTPRequestHandler):
    """A registry that answers 503 to everything (MLflow retries 503 with backoff); counts what it was asked."""

    hits: ClassVar[list[str]] = []

    def _answer(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def unavailable_registry():
    _Unavailable.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://ops:s3cr3t-pass@127.0.0.1:{server.server_address[1]}/", _Unavailable.hits
    finally:
        server.shutdown()


def test_registry_answering_503_exits_3_after_a_bounded_number_of_attempts(settings, unavailable_registry):
    uri, hits = unavailable_registry
    storage = storage_from_settings(settings)
    seed_incoming(storage, 3)
    # The timeout only guards the test: MLflow's default (7 retries, backoff 2) kept the job for minutes.
    proc = run_job("--workers", "0", env={"MLFLOW_TRACKING_URI": uri}, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert 1 <= len(hits) <= 3, f"{len(hits)} requests to a registry that is down"
    assert "s3cr3t" not in out and "ops:" not in out
    assert "registry" in proc.stderr and "503" in proc.stderr
    assert run_prefixes(storage) == []  # nothing started, nothing to continue


def test_registry_refusing_connections_exits_3_without_credentials(settings):
    storage = storage_from_settings(settings)
    seed_incoming(storage, 3)
    uri = f"http://user:secret@127.0.0.1:{free_port()}/"  # nothing listens there (the finding used port 9)
    proc = run_job("--workers", "0", env={"MLFLOW_TRACKING_URI": uri}, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "secret" not in out
    assert "registry" in proc.stderr and "unreachable" in proc.stderr
