"""Serving metrics: quantiles from buckets, the sliding minute, and the multiprocess merge that makes
``/metrics`` correct with several worker processes (real separate processes sharing a directory)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_serving.metrics import ServingMetrics, SlidingCounter, histogram_quantile


def test_histogram_quantile_interpolates_inside_the_bucket():
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets, 100) == pytest.approx(0.002)
    assert histogram_quantile(0.25, buckets, 100) == pytest.approx(0.0015)
    assert histogram_quantile(0.99, buckets, 100) == pytest.approx(0.002 + 0.002 * 49 / 50)
    assert math.isnan(histogram_quantile(0.5, buckets, 0))
    # Everything beyond the last finite bound: the estimate is that bound, as in Prometheus.
    assert histogram_quantile(0.99, [(0.001, 0.0), (math.inf, 10.0)], 10) == pytest.approx(0.001)


def test_sliding_counter_forgets_after_a_minute():
    now = [1000.0]
    counter = SlidingCounter(60, clock=lambda: now[0])
    for _ in range(5):
        counter.add()
    now[0] += 30
    assert counter.add(2) == 7
    now[0] += 31  # the first five are now 61 s old
    assert counter.total() == 2
    now[0] += 600
    assert counter.total() == 0


def test_single_process_summary_counts_what_was_recorded():
    m = ServingMetrics(start_sampler=False)
    m.record_request("/predict", "POST", 200, 0.003, None)
    m.record_request("/predict", "POST", 415, 0.001, "unsupported_format")
    m.record_predictions([3], [0.42], needs_review=1)
    s = m.summary()
    assert s["requests_total"] == 2 and s["errors_total"] == 1
    assert s["errors"] == [{"endpoint": "/predict", "status": 415, "code": "unsupported_format", "count": 1}]
    assert s["predictions"]["per_class"]["Dress"] == 1 and s["predictions"]["needs_review"] == 1
    assert s["latency"]["/predict"]["count"] == 2
    assert s["workers"] == 1 and s["process"]["rss_bytes"] > 0


_WRITER = """
import sys
from model_serving.metrics import ServingMetrics
m = ServingMetrics(start_sampler=False)
n = int(sys.argv[1])
for i in range(n):
    m.record_request("/predict", "POST", 200, 0.002, None)
m.record_predictions([i % 10 for i in range(n)], [0.9] * n, needs_review=0)
m.record_request("/predict", "POST", 400, 0.001, "invalid_image")
print(m.summary()["workers"])
"""

_READER = """
import json, sys
from model_serving.metrics import ServingMetrics, mark_process_dead
for pid in sys.argv[1:]:
    mark_process_dead(int(pid))
m = ServingMetrics(start_sampler=False)
print(json.dumps({"summary": m.summary(), "text": m.prometheus_text().decode()}))
"""


def _run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)


def test_multiprocess_views_add_up_all_workers(tmp_path: Path):
    from prometheus_client.parser import text_string_to_metric_families

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(n)], env=env, stdout=subprocess.PIPE) for n in (30, 70)
    ]
    pids = [w.pid for w in writers]
    for w in writers:
        assert w.wait(timeout=120) == 0
    out = json.loads(_run(_READER, env, *map(str, pids)).stdout)
    s = out["summary"]
    by = {(r["endpoint"], r["status"]): r["count"] for r in s["requests"]}
    assert by[("/predict", 200)] == 100 and by[("/predict", 400)] == 2
    assert s["predictions"]["total"] == 100 and s["predictions"]["per_class"]["T-shirt/top"] == 10
    assert s["latency"]["/predict"]["count"] == 102
    # The writers are dead: their live gauges are gone, only the reader's own process remains.
    assert s["workers"] == 1
    families = {f.name: f for f in text_string_to_metric_families(out["text"])}
    total = sum(s.value for s in families["ric_http_requests"].samples if s.name == "ric_http_requests_total")
    assert total == 102


def test_a_worker_starts_beside_another_worker_s_file_that_is_still_empty(tmp_path: Path):
    # Another worker has just created its file and not yet sized it: reading it raised struct.error, and in ~1 of 10
    # server starts a worker died in ServingMetrics() and was respawned.
    (tmp_path / "counter_99999.db").write_bytes(b"")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = json.loads(_run(_READER, env).stdout)
    assert out["summary"]["workers"] == 1 and "ric_requests_last_minute" in out["text"]
