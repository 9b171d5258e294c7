"""The runtime that serves a version is chosen on the CPU that runs it, per path, by timing; every choice can be
forced, and a cached choice is reused."""

from __future__ import annotations

import numpy as np
import pytest

from inference.cache import ModelCache
from inference.choice import API, BATCH, PATHS, ChoiceCache, RuntimeChoice, choose, time_runtime
from inference.loading import CHOICES_FILE, RuntimeUnavailable, load_predictor
from tests.support.models import register_tiny_model

NAMES = ("litert-int8", "onnx", "litert", "keras-graph")


class _Echo:
    """A stand-in runtime: answers uniform probabilities; ``name`` says which it stands for."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 10), 0.1, np.float32)


@pytest.mark.parametrize("fastest", NAMES)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_fastest_runtime_is_chosen_whichever_it_is(fastest: str, path: str) -> None:
    runtimes = {name: _Echo(name) for name in NAMES}
    seen_batches: list[int] = []

    def timer(run, batch: int) -> float:  # the fastest is whichever this machine says
        seen_batches.append(batch)
        name = next(n for n, r in runtimes.items() if r.run == run)
        return 1e-5 if name == fastest else 1e-4 * (1 + NAMES.index(name))

    candidates = {name: (lambda r=runtime: r) for name, runtime in runtimes.items()}
    where = PATHS[path]
    choice, runtime = choose(candidates, path=where, threads=2, cpu="Test CPU (x86_64)", timer=timer)
    assert runtime is runtimes[fastest] and choice.chosen == fastest
    assert set(seen_batches) == {where.batch} and choice.batch == where.batch and choice.path == path
    assert choice.timings_ms[fastest] == pytest.approx(0.01) and len(choice.timings_ms) == 4
    assert f"fastest of 4 at batch {where.batch} with 2 thread(s) on Test CPU (x86_64): {fastest}" in choice.reason


def test_a_runtime_that_cannot_run_here_is_left_out() -> None:
    def broken():
        raise RuntimeError("no such library here")

    choice, _ = choose(
        {"litert-int8": broken, "onnx": lambda: _Echo("onnx")}, path=API, threads=1, cpu="c", timer=lambda r, b: 1.0
    )
    assert choice.chosen == "onnx" and list(choice.timings_ms) == ["onnx"]
    with pytest.raises(RuntimeError, match="no runtime"):
        choose({"litert-int8": broken}, path=API, threads=1, cpu="c")


def test_the_timer_measures_seconds_per_image() -> None:
    import time

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.002)
        return batch

    per_image = time_runtime(run, 4, seconds=0.05)
    assert 0.0005 <= per_image < 0.01  # 2 ms a call of 4 images, whatever the scheduler adds


def test_the_choice_cache_keeps_choices_and_survives_a_damaged_file(tmp_path) -> None:
    cache = ChoiceCache(tmp_path / "choices.json")
    key = ChoiceCache.key("cpu", "run1", API, 1)
    assert cache.get(key) is None
    cache.put(key, RuntimeChoice("api", 1, 1, "onnx", {"onnx": 0.1, "litert": 0.2}, "cpu"))
    again = cache.get(key)
    assert again is not None and again.chosen == "onnx" and again.how == "cached" and "cached" in again.reason
    assert cache.get(ChoiceCache.key("other cpu", "run1", API, 1)) is None  # another CPU measures for itself
    assert cache.get(ChoiceCache.key("cpu", "run1", BATCH, 1)) is None  # and another path
    (tmp_path / "choices.json").write_text("{not json")
    assert cache.get(key) is None


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('choice') / 'mlflow.db'}"
    register_tiny_model(uri)
    return uri


@pytest.mark.parametrize(
    ("runtime", "name"),
    [("litert-int8", "litert-int8"), ("litert", "litert"), ("onnx", "onnxruntime"), ("keras", "keras-graph")],
)
def test_every_runtime_can_be_forced_and_answers_like_the_others(registered: str, runtime: str, name: str) -> None:
    predictor = load_predictor("models:/refund-item-classifier@champion", registered, runtime=runtime, path=BATCH)
    assert predictor.runtime_name == name
    choice = predictor.describe_runtime()["runtime_choice"]
    assert choice["how"] == "forced" and choice["path"] == "batch" and "configured" in choice["reason"]
    keras = load_predictor("models:/refund-item-classifier@champion", registered, runtime="keras")
    images = np.random.default_rng(0).integers(0, 255, (16, 28, 28), dtype=np.uint8)
    assert np.mean(predictor.predict_proba(images).argmax(1) == keras.predict_proba(images).argmax(1)) >= 0.9


def test_auto_times_every_runtime_here_and_a_restart_reuses_the_choice(registered: str, tmp_path) -> None:
    cache = ModelCache(tmp_path / "model-cache")
    first = load_predictor("models:/refund-item-classifier@champion", registered, cache=cache, path=API)
    choice = first.choice
    assert choice is not None and choice["how"] == "measured" and choice["batch"] == 1
    assert set(choice["timings_ms"]) == {"litert-int8", "onnx", "litert", "keras-graph"}
    assert choice["chosen"] == min(choice["timings_ms"], key=choice["timings_ms"].get)
    assert (cache.root / CHOICES_FILE).is_file()
    again = load_predictor("models:/refund-item-classifier@champion", registered, cache=cache, path=API)
    assert again.choice["how"] == "cached" and again.choice["chosen"] == choice["chosen"]
    assert again.runtime_name == first.runtime_name
    # A start with the registry down serves the cached copy through the runtime chosen for this CPU.
    from inference.loading import load_cached

    cold = load_cached(cache)
    assert cold is not None and cold.source == "cache" and cold.runtime_name == first.runtime_name
    # The batch path is timed for itself.
    night = load_predictor("models:/refund-item-classifier@champion", registered, cache=cache, path=BATCH)
    assert night.choice["how"] == "measured" and night.choice["batch"] == 1024


def test_a_forced_runtime_the_export_lacks_is_refused(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_tiny_model(uri, export=False)
    with pytest.raises(RuntimeUnavailable):
        load_predictor("models:/refund-item-classifier@champion", uri, runtime="onnx")
    fallback = load_predictor("models:/refund-item-classifier@champion", uri)
    assert fallback.runtime_name == "keras-graph" and "no exported runtime" in fallback.fallback_reason


def test_the_settings_offer_exactly_the_runtimes_a_loader_knows() -> None:
    from common.settings import RUNTIME_CHOICES
    from inference.loading import RUNTIMES

    assert sorted(RUNTIME_CHOICES) == sorted(RUNTIMES)
