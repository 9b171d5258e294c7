"""Which runtime serves a version on the CPU that runs it, per path: the API answers one image at a time, the nightly
job scores large batches, and the fastest runtime for one is not always the fastest for the other, nor the same on
every CPU (on an AMD Zen 4 LiteRT int8 was fastest at every batch size; on an AMD Zen 1 it was the slowest at
batch 1,024, behind ONNX Runtime and the Keras graph).

Every runtime the version's export says passed parity, and the Keras graph, is timed for a moment on this machine
at the path's batch size and thread count (:func:`time_runtime`); the fastest serves (:func:`choose`). The choice
is kept per CPU, version, path and threads in a small JSON file (:class:`ChoiceCache`, beside the local model
cache), so a restart loads only the winner; ``/health``, the night's summary and its MLflow run say which and why
(:meth:`RuntimeChoice.to_dict`).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.storage import atomic_write
from inference.runtimes import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPath:
    """Where a runtime serves, and the batch size it is timed at there."""

    name: str
    batch: int


# The API answers one photo per request (a handful at most); the nightly job scores in batches of --batch-size.
API = ServingPath("api", 1)
BATCH = ServingPath("batch", 1024)
PATHS = {p.name: p for p in (API, BATCH)}
TIMING_SECONDS = 0.4  # per candidate: long enough for a stable median, short enough for every start
MIN_CALLS = 3


def time_runtime(run: Callable[[np.ndarray], Any], batch: int, seconds: float = TIMING_SECONDS) -> float:
    """Seconds per image of ``run`` at ``batch`` images a call: the median of calls over about ``seconds`` (at least
    ``MIN_CALLS``), after one untimed call that compiles or allocates what it needs."""
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    run(x)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_CALLS or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10_000:
            break
    return statistics.median(times) / batch


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime chosen for one path on one CPU, the timings that chose it (ms per image), and how it was made."""

    path: str
    batch: int
    threads: int
    chosen: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    cpu: str = ""
    how: str = "measured"  # "measured", "cached" (an earlier start's measurement) or "forced" (configured)

    @property
    def reason(self) -> str:
        if self.how == "forced":
            return f"{self.chosen} was configured (SERVING_RUNTIME / --runtime)"
        ranked = sorted(self.timings_ms.items(), key=lambda kv: kv[1])
        rest = ", ".join(f"{k} {v:.4g}" for k, v in ranked[1:])
        when = "measured at load" if self.how == "measured" else "measured at an earlier load (cached)"
        return (
            f"fastest of {len(ranked)} at batch {self.batch} with {self.threads} thread(s) on {self.cpu}: "
            f"{self.chosen} {self.timings_ms.get(self.chosen, float('nan')):.4g} ms/image"
            + (f" (then {rest})" if rest else "")
            + f"; {when}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def choose(
    candidates: Mapping[str, Callable[[], Runtime]],
    *,
    path: ServingPath,
    threads: int,
    cpu: str,
    timer: Callable[[Callable[[np.ndarray], Any], int], float] = time_runtime,
) -> tuple[RuntimeChoice, Runtime]:
    """Load every candidate (name -> loader) and time it at the path's batch size; the fastest wins (ties: the
    earlier candidate). A candidate that fails to load is left out, with a warning."""
    batch = path.batch
    loaded: dict[str, Runtime] = {}
    timings: dict[str, float] = {}
    for name, load in candidates.items():
        try:
            runtime = load()
            timings[name] = round(timer(runtime.run, batch) * 1000, 6)
        except Exception as exc:  # one runtime missing here must not stop the others from serving
            log.warning("runtime %s cannot run here: %s: %s", name, type(exc).__name__, exc)
            continue
        loaded[name] = runtime
    if not loaded:
        raise RuntimeError("no runtime could run this version here")
    chosen = min(timings, key=lambda k: (timings[k], list(candidates).index(k)))
    choice = RuntimeChoice(path.name, batch, threads, chosen, timings, cpu)
    log.info("runtime for the %s path: %s", path.name, choice.reason)
    return choice, loaded[chosen]


class ChoiceCache:
    """Earlier choices, one JSON file: ``{key: RuntimeChoice}``, the key naming the CPU, the version's run, the path
    and the threads. A file that cannot be read or written costs a measurement, never a load."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @staticmethod
    def key(cpu: str, run_id: str, path: ServingPath, threads: int) -> str:
        return f"{cpu}|{run_id}|{path.name}:{path.batch}|{threads}"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> RuntimeChoice | None:
        entry = self._read().get(key)
        try:
            fields = {k: v for k, v in entry.items() if k != "reason"}
            return RuntimeChoice(**{**fields, "how": "cached"})
        except (AttributeError, TypeError):
            return None

    def put(self, key: str, choice: RuntimeChoice) -> None:
        data = self._read()
        data[key] = {k: v for k, v in choice.to_dict().items() if k not in ("reason", "how")}
        try:
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("could not keep the runtime choice in %s: %s", self.path, exc)
