"""The registry is not a single point of failure: the local model cache, the serving state's fallback to it, and
credentials kept out of what clients and logs see."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.logging import RedactingFilter
from common.redact import redact
from inference.cache import ModelCache, cache_root
from inference.models import ModelInfo
from model_serving.state import ServingState
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
    return ServingState(
        loader=loader,
        resolver=resolver,
        reference_loader=lambda info: None,
        window_factory=lambda info: _NullWindow(),
        poll_seconds=0,
        cache_loader=cache_loader,
    )


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
