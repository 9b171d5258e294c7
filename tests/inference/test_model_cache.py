"""The registry is not a single point of failure: the local model cache, the serving state's fallback to it, and
credentials kept out of what clients and logs see."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from common.logging import RedactingFilter
from common.redact import redact
from inference.cache import ModelCache, cache_root
from inference.versions import ModelInfo
from model_serving.state import ModelSource, ServingState
from tests.support.fakes import FakePredictor

V1 = ModelInfo("refund-item-classifier", "1", "champion", "run-1", "models:/refund-item-classifier@champion")
V2 = ModelInfo("refund-item-classifier", "2", "champion", "run-2", "models:/refund-item-classifier@champion")


def _model_dir(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / f"model-{tag}"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(tag.encode())
    return folder


def test_the_cache_keeps_the_last_version_with_its_extras(tmp_path):
    cache = ModelCache(cache_root(tmp_path, "models:/refund-item-classifier@champion"))
    assert cache.current() is None and cache.extra("drift-reference.npz") is None
    cache.store(V1, _model_dir(tmp_path, "one"), "runtime")
    assert cache.put_extra(V1, "drift-reference.npz", b"ref-1")
    info, folder = cache.current()
    assert info == V1 and (folder / "runtime" / "model.tflite").read_bytes() == b"one"
    assert cache.extra("drift-reference.npz") == b"ref-1"
    cache.store(V2, _model_dir(tmp_path, "two"), "keras")
    assert cache.current()[0] == V2 and cache.extra("drift-reference.npz") is None  # extras belong to a version
    assert not cache.put_extra(V1, "drift-reference.npz", b"stale")  # only the current version takes extras
    assert sorted(p.name for p in cache.root.iterdir()) == ["current.json", "v2"]  # older versions pruned
    with pytest.raises(ValueError):
        cache.store(V2, tmp_path, "onnx-folder")


def test_storing_leaves_a_running_process_s_staging_alone_and_prunes_a_dead_one_s(tmp_path):
    # Two server workers load the champion at the same moment and both cache it: the first to finish must not take
    # away the folder the second is still copying into (it did: "could not cache ... No such file or directory").
    import subprocess
    import sys

    cache = ModelCache(cache_root(tmp_path, "models:/refund-item-classifier@champion"))
    cache.root.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (cache.root / f".v1.tmp-{other.pid}" / "runtime").mkdir(parents=True)
        (cache.root / f".v1.tmp-{dead.pid}" / "runtime").mkdir(parents=True)
        cache.store(V1, _model_dir(tmp_path, "one"), "runtime")
        names = sorted(p.name for p in cache.root.iterdir())
        assert names == sorted([f".v1.tmp-{other.pid}", "current.json", "v1"])
        assert cache.current()[0] == V1
    finally:
        other.kill()
        other.wait()


def test_a_damaged_pointer_means_no_cache_rather_than_a_crash(tmp_path):
    cache = ModelCache(tmp_path / "c")
    cache.store(V1, _model_dir(tmp_path, "one"), "runtime")
    (cache.root / "current.json").write_text("{not json")
    assert cache.current() is None


class FlakyRegistry:
    """Unreachable for the first ``down`` calls, then names ``info``."""

    def __init__(self, down: int, info: ModelInfo) -> None:
        self.down, self.info, self.calls = down, info, 0

    def __call__(self) -> ModelInfo:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("HTTPConnectionPool: http://user:secret@registry:5000/api/2.0 refused")
        return self.info


def _state(resolver, loader, cache_loader) -> ServingState:
    source = ModelSource(load=loader, resolve=resolver, load_reference=lambda info: None, load_cached=cache_loader)
    return ServingState(source, window_factory=lambda info: _NullWindow(), poll_seconds=0)


class _NullWindow:
    def add(self, features) -> None:
        pass


def test_the_cache_serves_until_the_registry_answers_then_the_registry_wins():
    cached = FakePredictor(version="1")
    cached.source = "cache"
    loads: list[str] = []

    def loader(info):
        loads.append(info.version)
        return FakePredictor(version=info.version)

    state = _state(FlakyRegistry(1, V2), loader, lambda: (cached, None))
    assert state.check_for_update() is False
    health = state.health()
    assert health["ready"] and health["model"]["version"] == "1" and health["model"]["source"] == "cache"
    assert health["error"] == "registry_unreachable" and "secret" not in str(health)
    assert state.check_for_update() is True  # the registry answers, naming another version: it is loaded
    assert loads == ["2"] and state.health()["model"]["version"] == "2" and "error" not in state.health()


def test_when_the_registry_names_the_cached_version_nothing_is_reloaded():
    cached = FakePredictor(version="1")
    cached.source = "cache"

    def loader(info):
        raise AssertionError("the cached version must not be loaded again")

    state = _state(FlakyRegistry(1, V1), loader, lambda: (cached, None))
    state.check_for_update()
    assert state.served.predictor is cached
    state.check_for_update()
    assert state.served.predictor is cached and cached.source == "registry" and state.error is None


def test_no_cache_means_not_ready_with_the_reason():
    state = _state(FlakyRegistry(5, V1), lambda info: FakePredictor(), lambda: None)
    state.check_for_update()
    assert state.health()["ready"] is False and state.health()["error"] == "registry_unreachable"


def test_credentials_are_masked_in_text_and_in_every_logged_record():
    assert redact("GET http://user:secret@host:5000/api failed") == "GET http://***@host:5000/api failed"
    assert redact("sqlite:////srv/mlflow.db and s3://bucket/key") == "sqlite:////srv/mlflow.db and s3://bucket/key"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "load of %s failed", ("https://t0ken@h/m",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "load of https://***@h/m failed"


# --- issue 28: no registry call in a request, a cache start that never waits for the registry ---------------------


class HangingRegistry:
    """Answers ``first`` once (None: never), then hangs until released (or 30 s), and fails."""

    def __init__(self, first: ModelInfo | None = None) -> None:
        self.first, self.calls = first, 0
        self.release, self.waiting = threading.Event(), threading.Event()
        self.answered = False

    def __call__(self) -> ModelInfo:
        self.calls += 1
        if self.calls == 1 and self.first is not None:
            return self.first
        self.waiting.set()
        self.release.wait(30)
        self.answered = True
        raise ConnectionError("the registry timed out")


@pytest.fixture(scope="module")
def cached_champion(_batch_champion_store, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(tracking URI, cache folder): the session's tiny champion loaded once with a cache, its reference kept."""
    from inference.loading import load_predictor
    from model_serving.source import REFERENCE_FILE
    from monitoring.reference import load_reference_for_version

    db, _ = _batch_champion_store
    root = tmp_path_factory.mktemp("cached-champion")
    shutil.copyfile(db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model_uri = "models:/refund-item-classifier@champion"
    cache = ModelCache(cache_root(root / "cache", model_uri))
    predictor = load_predictor(model_uri, uri, cache=cache)
    reference = load_reference_for_version(predictor.info.name, predictor.info.version, uri)
    assert cache.put_extra(predictor.info, REFERENCE_FILE, reference.to_bytes())
    return uri, root / "cache"


def _cached_app(cached_champion, tmp_path: Path, registry: HangingRegistry, *, damage_reference: bool = False):
    from dataclasses import replace

    from model_serving.factory import create_app
    from model_serving.source import REFERENCE_FILE
    from tests.support.api import serving_settings

    uri, cache_dir = cached_champion
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    if damage_reference:
        [ref] = copy.rglob(REFERENCE_FILE)
        ref.write_bytes(ref.read_bytes()[:200])  # truncated: zipfile.BadZipFile
    settings = replace(serving_settings(model_cache=str(copy)), mlflow_tracking_uri=uri)
    return create_app(settings=settings, resolver=registry, load_in_background=True, background=True)


def test_a_cache_start_is_ready_before_the_hanging_registry_answers(cached_champion, tmp_path):
    registry = HangingRegistry()
    app = _cached_app(cached_champion, tmp_path, registry)
    try:
        health = app.test_client().get("/health")  # a hanging registry kept this 503 for 34.5 s
        assert health.status_code == 200, health.get_json()
        assert health.get_json()["model"]["source"] == "cache" and health.get_json()["model"]["drift_reference"]
        assert not registry.answered
    finally:
        _stop(app, registry)


def _stop(app, registry: HangingRegistry) -> None:
    app.extensions["ric"]["state"].stop()
    registry.release.set()


def test_a_damaged_drift_reference_in_the_cache_costs_the_drift_status_only(cached_champion, tmp_path):
    registry = HangingRegistry()
    app = _cached_app(cached_champion, tmp_path, registry, damage_reference=True)
    try:
        client = app.test_client()
        health = client.get("/health")  # was 503 registry_unreachable, model null (BadZipFile)
        assert health.status_code == 200 and health.get_json()["model"]["drift_reference"] is False
        drift = client.get("/drift-status")
        assert drift.status_code == 503 and drift.get_json()["error"] == "reference_unavailable"
        assert "cache" in drift.get_json()["message"]
    finally:
        _stop(app, registry)


def test_a_reload_returns_while_the_registry_hangs_and_the_watcher_asks_it():
    from model_serving.factory import create_app
    from tests.support.api import serving_settings

    registry = HangingRegistry(first=V1)
    app = create_app(
        settings=serving_settings(admin_token="t"),
        resolver=registry,
        loader=lambda info: FakePredictor(version=info.version),
        reference_loader=lambda info: None,
    )
    try:
        r = app.test_client().post("/admin/reload", headers={"Authorization": "Bearer t"})
        assert r.status_code == 202 and r.get_json()["model_version"] == "1"
        assert not registry.answered  # answered without waiting for the registry (58 s, worker frozen)
        assert registry.waiting.wait(30)  # the watcher thread is the one asking
        assert app.test_client().get("/health").status_code == 200  # and the worker serves meanwhile
    finally:
        _stop(app, registry)


def test_cache_writes_are_fsynced_before_the_pointer_names_them(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    cache = ModelCache(tmp_path / "c")
    cache.store(V1, _model_dir(tmp_path, "one"), "runtime", extras={"drift-reference.npz": b"ref"})
    pointer = next(i for i, p in enumerate(synced) if p.endswith("current.json"))
    before = synced[:pointer]
    assert any(p.endswith("/runtime/model.tflite") for p in before), synced
    assert any(p.endswith("/extras/drift-reference.npz") for p in before), synced
    assert str(cache.root) in synced[: pointer + 2]  # the folder holding the renamed version
