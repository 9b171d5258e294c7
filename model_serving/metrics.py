"""Serving metrics: prometheus_client collectors plus a JSON summary computed from the same numbers.

One :class:`ServingMetrics` per process. When ``PROMETHEUS_MULTIPROC_DIR`` is set (the launcher in
``model_serving/server.py`` creates a fresh directory for each server start) every worker process writes its
values to memory-mapped files there, and both views — Prometheus text and the JSON summary — are computed from
the merge of all workers' files, so they are correct however many worker processes serve.

What is counted (the contract the tests check):

* ``ric_http_requests_total{endpoint,method,status}``: every answered request once, errors included;
  ``endpoint`` is the route template (``/predict``), ``unmatched`` for a 404 without a route; ``method`` is a
  standard method or ``OTHER``. No label takes free text from a request.
* ``ric_http_errors_total{endpoint,status,code}``: the subset with status >= 400, by error code.
* ``ric_request_duration_seconds{endpoint}``: processing time inside the app (histogram; p50/p95/p99 in the JSON
  view are interpolated from its buckets, as Prometheus' ``histogram_quantile`` does).
* ``ric_predictions_total{class_name}``, ``ric_prediction_confidence`` (histogram), ``ric_needs_review_total``,
  ``ric_unfamiliar_total`` (items called unfamiliar) and ``ric_unfamiliarity_scored_total`` (items scored by a version
  that computes the unfamiliarity score: the share's denominator): only items of successful /predict requests; a
  rejected upload changes none of them.
* ``ric_served_model{name,version,runtime}``: 1 for the version each worker serves and the runtime it runs on.
* ``ric_requests_last_minute``: each process's sliding 60-second request count, summed over live processes;
  ``ric_predict_requests_last_minute`` the same for ``POST /predict`` alone (every client's, not one page's).
* ``ric_process_cpu_percent`` / ``ric_process_rss_bytes`` per worker pid and ``ric_system_*``: sampled by a
  background thread every ``sample_seconds`` (psutil's cpu_percent is primed at start, so the first reading
  is a real measurement, not 0).
"""

from __future__ import annotations

import contextlib
import glob
import os
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import prometheus_client
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

from common.labels import CLASS_NAMES
from model_serving.state import Served, runtime_of

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PROMETHEUS_CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
WINDOW_SECONDS = 60
PREDICT_ENDPOINT = "/predict"
# The method label is one of these or OTHER: a client's free text as a label value would make one time series
# per random verb (33,000 random methods took /metrics from 3 KB to 2.4 MB).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """The metric label of an HTTP method: itself if standard, else ``OTHER``."""
    return method if method in HTTP_METHODS else "OTHER"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class SlidingCounter:
    """Events in the last ``seconds`` seconds, in one-second buckets (per process, lock-protected)."""

    def __init__(self, seconds: int = WINDOW_SECONDS, clock: Any = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._buckets = [0] * seconds
        self._stamps = [-1] * seconds
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> int:
        now = int(self._clock())
        i = now % self.seconds
        with self._lock:
            if self._stamps[i] != now:
                self._stamps[i] = now
                self._buckets[i] = 0
            self._buckets[i] += n
            return self._total(now)

    def total(self) -> int:
        with self._lock:
            return self._total(int(self._clock()))

    def _total(self, now: int) -> int:
        lo = now - self.seconds
        return sum(b for b, s in zip(self._buckets, self._stamps, strict=True) if s > lo)


class ServingMetrics:
    """The serving process's collectors. ``registry`` is private, so several apps can live in one process."""

    def __init__(self, *, sample_seconds: float = 2.0, start_sampler: bool = True) -> None:
        self.multiproc_dir = multiprocess_dir()
        if self.multiproc_dir:
            # prometheus_client picks its value class when first imported; the launcher may have imported it
            # before it set the directory, so pick again now (before any metric exists in this worker).
            values.ValueClass = values.get_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        self._declare_traffic(self.registry)
        self._declare_resources(self.registry)
        self._served_labels: tuple[str, str, str] | None = None
        self._class_counters = [self.predictions.labels(class_name=name) for name in CLASS_NAMES]
        self._req_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._window = SlidingCounter()
        self._predict_window = SlidingCounter()
        self._rpm_all = 0  # every worker's requests in the last minute, refreshed by sample()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # prime: the next call measures from here
        psutil.cpu_percent(None)
        self.started = time.time()
        self.sample_seconds = sample_seconds
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.sample()
        if start_sampler:
            self._sampler = threading.Thread(target=self._sample_loop, name="metrics-sampler", daemon=True)
            self._sampler.start()

    def _declare_traffic(self, reg: CollectorRegistry) -> None:
        """What the requests and their predictions add up to."""
        self.requests = Counter(
            "ric_http_requests", "Answered HTTP requests", ["endpoint", "method", "status"], registry=reg
        )
        self.errors = Counter(
            "ric_http_errors", "Answered HTTP requests with status >= 400", ["endpoint", "status", "code"], registry=reg
        )
        self.latency = Histogram(
            "ric_request_duration_seconds",
            "Processing time of a request inside the app",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter("ric_predictions", "Scored items by predicted class", ["class_name"], registry=reg)
        self.confidence = Histogram(
            "ric_prediction_confidence", "Top-1 confidence of scored items", buckets=CONFIDENCE_BUCKETS, registry=reg
        )
        self.needs_review = Counter("ric_needs_review", "Scored items flagged needs_review", registry=reg)
        self.unfamiliar = Counter(
            "ric_unfamiliar", "Scored items the served model called unfamiliar (not one of the 10)", registry=reg
        )
        self.unfamiliar_scored = Counter(
            "ric_unfamiliarity_scored",
            "Scored items whose served version computes the unfamiliarity score",
            registry=reg,
        )
        self.last_minute = Gauge(
            "ric_requests_last_minute",
            "Requests answered in the last 60 seconds",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.predict_last_minute = Gauge(
            "ric_predict_requests_last_minute",
            "POST /predict requests answered in the last 60 seconds",
            registry=reg,
            multiprocess_mode="livesum",
        )

    def _declare_resources(self, reg: CollectorRegistry) -> None:
        """What the sampler measures, and which version each worker serves."""
        self.process_cpu = Gauge(
            "ric_process_cpu_percent", "CPU % of the serving process", registry=reg, multiprocess_mode="liveall"
        )
        self.process_rss = Gauge(
            "ric_process_rss_bytes", "Resident memory of the serving process", registry=reg, multiprocess_mode="liveall"
        )
        self.system_cpu = Gauge(
            "ric_system_cpu_percent", "System-wide CPU %", registry=reg, multiprocess_mode="livemostrecent"
        )
        self.system_memory = Gauge(
            "ric_system_memory_percent", "System-wide memory use %", registry=reg, multiprocess_mode="livemostrecent"
        )
        self.system_memory_available = Gauge(
            "ric_system_memory_available_bytes",
            "System-wide available memory",
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.served_model = Gauge(
            "ric_served_model",
            "The served model version and the inference runtime running it (1 = served)",
            ["name", "version", "runtime"],
            registry=reg,
            multiprocess_mode="liveall",
        )

    # ---- recording (request path: a few memory writes) -----------------------------------------------------
    def record_request(self, endpoint: str, method: str, status: int, seconds: float, error_code: str | None) -> None:
        method = method_label(method)
        key = (endpoint, method, status)
        children = self._req_children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint=endpoint, method=method, status=str(status)),
                self.latency.labels(endpoint=endpoint),
            )
            self._req_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint=endpoint, status=str(status), code=error_code or "http_error").inc()
        self.last_minute.set(self._window.add())
        if endpoint == PREDICT_ENDPOINT:
            self.predict_last_minute.set(self._predict_window.add())

    def record_predictions(
        self,
        class_ids: Iterable[int],
        confidences: Iterable[float],
        needs_review: int,
        unfamiliar: int = 0,
        *,
        scored_for_unfamiliarity: int | None = None,
    ) -> None:
        """``unfamiliar``: how many of the items were called unfamiliar; ``scored_for_unfamiliarity``: how many were
        scored by a version that computes the score (the share's denominator)."""
        for class_id, conf in zip(class_ids, confidences, strict=True):
            self._class_counters[int(class_id)].inc()
            self.confidence.observe(float(conf))
        if needs_review:
            self.needs_review.inc(needs_review)
        if unfamiliar:
            self.unfamiliar.inc(unfamiliar)
        if scored_for_unfamiliarity:
            self.unfamiliar_scored.inc(scored_for_unfamiliarity)

    def show_served(self, served: Served) -> None:
        """The serving state's ``on_install``: a version starts serving."""
        self.set_served_model(served.info.name, served.info.version, str(runtime_of(served.predictor)["runtime"]))

    def set_served_model(self, name: str, version: str, runtime: str) -> None:
        """Called when a version starts serving: the gauge names it (and no longer the previous one)."""
        labels = (name, version, runtime)
        if self._served_labels is not None and self._served_labels != labels:
            self.served_model.labels(*self._served_labels).set(0)
        self.served_model.labels(*labels).set(1)
        self._served_labels = labels

    # ---- sampling ------------------------------------------------------------------------------------------
    def sample(self) -> None:
        """Refresh the resource gauges and this process's sliding-window count."""
        try:
            with self._process.oneshot():
                self.process_cpu.set(self._process.cpu_percent(None))
                self.process_rss.set(self._process.memory_info().rss)
            self.system_cpu.set(psutil.cpu_percent(None))
            vm = psutil.virtual_memory()
            self.system_memory.set(vm.percent)
            self.system_memory_available.set(vm.available)
        except psutil.Error:  # a sampler must never take the server down
            pass
        self.last_minute.set(self._window.total())
        self.predict_last_minute.set(self._predict_window.total())
        if self.multiproc_dir:
            try:  # the sum over live workers, for /predict's requests_per_minute without a file scan per request
                samples = _samples(self.collect_registry())
                self._rpm_all = int(_scalar(samples, "ric_requests_last_minute"))
            except (OSError, ValueError, struct.error):  # a sample must never take a worker down
                pass

    def requests_per_minute(self) -> int:
        """Requests the whole server answered in the last minute (other workers' counts up to ~2 s old)."""
        if not self.multiproc_dir:
            return self._window.total()
        return max(self._rpm_all, self._window.total())

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.sample_seconds):
            self.sample()

    def close(self) -> None:
        self._stop.set()

    # ---- exposition ----------------------------------------------------------------------------------------
    def collect_registry(self) -> CollectorRegistry:
        """The registry to read: all workers' merged files in multiprocess mode, else this process's own."""
        if not self.multiproc_dir:
            return self.registry
        merged = CollectorRegistry()
        SettledFilesCollector(merged, path=self.multiproc_dir)
        return merged

    def prometheus_text(self) -> bytes:
        return generate_latest(self.collect_registry())

    def summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON view (what ``GET /metrics`` answers by default)."""
        samples = _samples(self.collect_registry())
        requests_by = _counts(samples, "ric_http_requests_total", ("endpoint", "method", "status"))
        processes = _processes(samples)
        system_cpu = round(_scalar(samples, "ric_system_cpu_percent"), 1)
        system_memory = round(_scalar(samples, "ric_system_memory_percent"), 1)
        out = {
            # The seed API's fields first, kept for its clients: system-wide CPU and memory use in percent.
            "cpu_usage": system_cpu,
            "memory_usage": system_memory,
            "uptime_seconds": round(time.time() - self.started, 3),
            "workers": len(processes),
            "requests_total": sum(r["count"] for r in requests_by),
            "errors_total": sum(r["count"] for r in requests_by if r["status"] >= 400),
            "requests_per_minute": int(_scalar(samples, "ric_requests_last_minute")),
            "predict_requests_per_minute": int(_scalar(samples, "ric_predict_requests_last_minute")),
            "requests": requests_by,
            "errors": _counts(samples, "ric_http_errors_total", ("endpoint", "status", "code")),
            "latency": _latency(samples),
            "predictions": _predictions(samples),
            "process": {
                "cpu_percent": round(sum(p["cpu_percent"] for p in processes), 1),
                "rss_bytes": sum(p["rss_bytes"] for p in processes),
                "per_process": processes,
            },
            "system": {
                "cpu_percent": system_cpu,
                "memory_percent": system_memory,
                "memory_available_bytes": int(_scalar(samples, "ric_system_memory_available_bytes")),
                "cpu_count": psutil.cpu_count(),
            },
        }
        if extra:
            out.update(extra)
        return out


class SettledFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's merge of the workers' files, without the files another worker has only just created:
    such a file is empty for a moment, and reading it raised ``struct.error`` (in ~1 of 10 starts a worker died in
    its first metrics sample and was respawned; a ``/metrics`` request at that moment failed)."""

    def collect(self) -> Iterable[Any]:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(OSError):  # a dead worker's live gauges may be removed meanwhile
                if os.path.getsize(path) >= 8:  # the header: how much of the file is in use
                    files.append(path)
        return self.merge(files, accumulate=True)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _counts(samples: Samples, name: str, order: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per label set of counter ``name`` (status as a number), sorted by the labels in ``order``."""
    rows = [{**labels, "status": int(labels["status"]), "count": int(value)} for labels, value in samples.get(name, [])]
    rows.sort(key=lambda r: tuple(r[k] for k in order))
    return rows


def _latency(samples: Samples) -> dict[str, Any]:
    """Per endpoint: requests, mean and interpolated p50/p95/p99 in milliseconds."""
    latency: dict[str, Any] = {}
    for endpoint, buckets, count, total in _histograms(samples, "ric_request_duration_seconds", "endpoint"):
        latency[endpoint] = {
            "count": int(count),
            "mean_ms": round(1000 * total / count, 3) if count else None,
            **{
                f"p{q}_ms": _ms(histogram_quantile(q / 100, buckets, count))
                for q in (50, 95, 99)
                if count  # no percentiles of nothing
            },
        }
    return latency


def _predictions(samples: Samples) -> dict[str, Any]:
    """The scored items: by class, flagged for review, unfamiliar, and their confidence."""
    per_class = {name: 0 for name in CLASS_NAMES}
    for labels, value in samples.get("ric_predictions_total", []):
        per_class[labels["class_name"]] = int(value)
    conf_hist = next(iter(_histograms(samples, "ric_prediction_confidence", None)), None)
    confidence: dict[str, Any] = {"count": 0, "buckets": {}}
    if conf_hist is not None:
        _, buckets, count, total = conf_hist
        confidence = {
            "count": int(count),
            "mean": round(total / count, 6) if count else None,
            "buckets": {_le(b): int(c) for b, c in buckets},  # cumulative, like Prometheus' le buckets
        }
    return {
        "total": sum(per_class.values()),
        "per_class": per_class,
        "needs_review": int(_scalar(samples, "ric_needs_review_total")),
        # Items called unfamiliar, and their share of the items scored by a version that computes the score
        # (None: no such item yet)
        "unfamiliar": int(_scalar(samples, "ric_unfamiliar_total")),
        "unfamiliar_share": _share(
            _scalar(samples, "ric_unfamiliar_total"), _scalar(samples, "ric_unfamiliarity_scored_total")
        ),
        "confidence": confidence,
    }


def _processes(samples: Samples) -> list[dict[str, Any]]:
    """Each worker process's CPU % and resident memory, by pid."""
    processes = [
        {"pid": int(labels.get("pid", os.getpid())), "cpu_percent": round(value, 1)}
        for labels, value in samples.get("ric_process_cpu_percent", [])
    ]
    rss = {labels.get("pid", str(os.getpid())): value for labels, value in samples.get("ric_process_rss_bytes", [])}
    for p in processes:
        p["rss_bytes"] = int(rss.get(str(p["pid"]), 0))
    processes.sort(key=lambda p: p["pid"])
    return processes


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _samples(registry: CollectorRegistry) -> Samples:
    out: Samples = {}
    for family in registry.collect():
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _scalar(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def _histograms(samples: Samples, name: str, label: str | None) -> list[tuple[str, list, float, float]]:
    groups: dict[str, dict[str, Any]] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        key = labels.get(label, "") if label else ""
        groups.setdefault(key, {}).setdefault("buckets", {})
        le = float(labels["le"])
        groups[key]["buckets"][le] = groups[key]["buckets"].get(le, 0.0) + value
    for suffix in ("count", "sum"):
        for labels, value in samples.get(f"{name}_{suffix}", []):
            key = labels.get(label, "") if label else ""
            groups.setdefault(key, {"buckets": {}})[suffix] = groups.get(key, {}).get(suffix, 0.0) + value
    return [
        (key, sorted(g["buckets"].items()), g.get("count", 0.0), g.get("sum", 0.0))
        for key, g in sorted(groups.items())
        if g.get("count", 0.0) > 0
    ]


def histogram_quantile(q: float, buckets: list[tuple[float, float]], count: float) -> float:
    """Prometheus' estimate: linear interpolation inside the cumulative bucket holding rank ``q * count``."""
    if count <= 0:
        return float("nan")
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for bound, cum in buckets:
        if cum >= rank:
            if np.isinf(bound):
                return prev_bound
            width = cum - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width else 1.0)
        prev_bound, prev_count = bound, cum
    return prev_bound


def _ms(seconds: float) -> float | None:
    return None if np.isnan(seconds) else round(seconds * 1000, 3)


def _le(bound: float) -> str:
    return "+Inf" if np.isinf(bound) else f"{bound:g}"


def forget_dead_processes() -> list[int]:
    """Drop the live gauges of every worker process that no longer exists; returns their pids."""
    path = multiprocess_dir()
    if not path:
        return []
    pids = set()
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name.rsplit("_", 1)[-1][:-3]
            if pid.isdigit():
                pids.add(int(pid))
    dead = sorted(pid for pid in pids if not psutil.pid_exists(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return dead


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (call from the server master when a worker exits)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid, path)
