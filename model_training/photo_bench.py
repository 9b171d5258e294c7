"""The photo benchmark: a split's items rendered as warehouse photos, through THE preprocessing, scored.

Usage: imported by :mod:`model_training.train`, which runs it in every training run (``photo_val`` for model
choice and calibration, ``photo_test`` for reporting), and by :mod:`model_training.render_photos`, which renders
it into the cache before a run.

A photo set is a fixed-size, class-stratified subset of a split (``per_class`` items of each class, chosen by a
seeded permutation), each item rendered by :func:`data_processing.photos.render_photo` with the generator seed
``(seed, split tag, index in the split)``, encoded as JPEG, then decoded and preprocessed by
:func:`data_processing.preprocessing.preprocess_bytes` exactly as the API and the nightly batch do. Rendering is
the expensive part (~20-200 ms a photo), so:

- the 28x28 results are cached on local disk (``DATA_DIR/cache/photo-bench``) under a key made of the seed, the
  chosen items' content, and the source code of the renderer and of the preprocessing, so a change to either
  renders again and nothing stale is ever reused;
- :func:`start_rendering` renders in worker processes at the lowest CPU priority while the network trains
  (they use what training leaves idle, and finish at full speed after it).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.labels import NUM_CLASSES
from model_training.render_pool import LazyExecutor

log = logging.getLogger("model_training.photo_bench")

# Part of every photo's seed: a split's photos never repeat another's. "real_<split>" is the real-surface slice of
# that split's items (data_processing.real_photos): its own seeds, its own renderer, its own metrics (photo_real_*).
# "train"/"real_train": photos of training items, the in-distribution side the outlier-exposure head is fitted on.
SPLIT_TAGS = {"val": 1, "test": 2, "train": 3, "real_val": 11, "real_test": 12, "real_train": 13}
REAL_PREFIX = "real_"
DEFAULT_SEED = 2026
# 1,000 validation photos, 2,000 test photos; the real-surface slice: 500 and 1,000.
DEFAULT_PER_CLASS = {"val": 100, "test": 200, "real_val": 50, "real_test": 100}
# CPU seconds to render and preprocess one photo (benchmarks/bench_photo_bench.py: ~0.054 on the 2-core machine);
# what the time budget keeps for photos still pending when the fit ends.
PHOTO_CPU_SECONDS = 0.06


@dataclass(frozen=True)
class PhotoSet:
    """Preprocessed photos of ``split[indices]``: (N, 28, 28) uint8 model images and their labels."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # positions in the split
    seed: int
    failed: int = 0  # photos the preprocessing refused (counted wrong; should be 0)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def is_real(split: str) -> bool:
    """Whether ``split`` names the real-surface slice (``real_val``, ``real_test``)."""
    return split.startswith(REAL_PREFIX)


def benchmark_id(photo_set: PhotoSet) -> str:
    """Which photo set a number was measured on (renderer version, split, seed, size): only like is compared."""
    from data_processing.photos import RENDERER_VERSION
    from data_processing.real_photos import REAL_RENDERER_VERSION

    version = f"real{REAL_RENDERER_VERSION}" if is_real(photo_set.split) else f"renderer{RENDERER_VERSION}"
    return f"{version}-{photo_set.split}-seed{photo_set.seed}-n{len(photo_set)}"


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` positions of each class (all of a class if it has fewer), seeded, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(NUM_CLASSES):
        where = np.flatnonzero(labels == k)
        chosen.append(rng.permutation(where)[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def photo_seed(seed: int, split: str, index: int) -> tuple[int, int, int]:
    return (int(seed), SPLIT_TAGS.get(split, 9), int(index))


def render(image: np.ndarray, seed: Sequence[int], split: str) -> Any:
    """The photo of one item for ``split``'s photo set (the real-surface renderer for ``real_*``)."""
    if is_real(split):
        from data_processing.real_photos import render_real_photo

        return render_real_photo(image, tuple(seed))
    from data_processing.photos import render_photo

    return render_photo(image, tuple(seed))


def render_one(image: np.ndarray, seed: Sequence[int], split: str = "val") -> np.ndarray | None:
    """One item -> photo -> preprocessing -> 28x28 uint8 (None when the preprocessing refuses the photo)."""
    from data_processing.preprocessing import ImageError, preprocess_bytes

    try:
        return preprocess_bytes(render(image, seed, split).data)
    except ImageError:
        return None


def _render_chunk(images: np.ndarray, seeds: list[tuple[int, int, int]], split: str) -> list[np.ndarray | None]:
    return [render_one(img, s, split) for img, s in zip(images, seeds, strict=True)]


def cache_key(split: str, images: np.ndarray, labels: np.ndarray, seed: int) -> str:
    """What a cached photo set depends on: the items, the seed, and the code that renders and preprocesses."""
    from data_processing import photo_sources, photos, preprocessing, real_photos

    h = hashlib.sha256()
    h.update(f"{split}:{seed}:{photos.RENDERER_VERSION}".encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    modules = (photos, preprocessing, real_photos, photo_sources) if is_real(split) else (photos, preprocessing)
    for module in modules:
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:20]


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("images", "ok")}
    except (OSError, ValueError, KeyError):
        return None


def _save_cached(path: Path, images: np.ndarray, ok: np.ndarray) -> None:
    from common.storage import atomic_write

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, ok=ok)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


@dataclass(frozen=True)
class Rendering:
    """Where a pending set's photos come from: the cache's arrays (``cached``), or the render workers' ``futures``,
    whose photos are then kept at ``cache_path``."""

    cache_path: Path | None = None
    cached: dict[str, np.ndarray] | None = None
    futures: list[Future] | None = None


class PendingPhotoSet:
    """A photo set being rendered (or loaded from the cache); :meth:`result` waits for it."""

    def __init__(self, split: str, labels: np.ndarray, indices: np.ndarray, seed: int, rendering: Rendering) -> None:
        self.split, self.labels, self.indices, self.seed = split, labels, indices, seed
        self._cache_path, self._cached, self._futures = rendering.cache_path, rendering.cached, rendering.futures

    @property
    def from_cache(self) -> bool:
        return self._cached is not None

    def pending_photos(self) -> int:
        """Photos not rendered yet (0 from the cache)."""
        if self._cached is not None or not self._futures:
            return 0
        per_chunk = -(-len(self.labels) // len(self._futures))
        return min(len(self.labels), sum(not f.done() for f in self._futures) * per_chunk)

    def result(self) -> PhotoSet:
        if self._cached is not None:
            out, ok = self._cached["images"], self._cached["ok"]
        else:
            rendered: list[np.ndarray | None] = []
            for fut in self._futures or []:
                rendered.extend(fut.result())
            ok = np.array([r is not None for r in rendered], dtype=bool)
            out = np.stack([r if r is not None else np.zeros((28, 28), np.uint8) for r in rendered]).astype(np.uint8)
            if self._cache_path is not None:
                _save_cached(self._cache_path, out, ok)
        return PhotoSet(self.split, out, self.labels, self.indices, self.seed, failed=int((~ok).sum()))


def start_rendering(
    jobs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    seed: int = DEFAULT_SEED,
    per_class: dict[str, int] | None = None,
    cache_dir: Path | None = None,
    workers: int = 2,
    chunk: int = 50,
    pool: LazyExecutor | None = None,
) -> tuple[dict[str, PendingPhotoSet], ProcessPoolExecutor | None]:
    """Start rendering the photo set of each ``(split, images, labels)`` in ``jobs``.

    Returns the pending sets and the executor (None when everything came from the cache): call
    ``executor.shutdown()`` after taking the results. ``pool``: render in its processes (created on first use)
    instead of new ones.
    """
    per_class = {**DEFAULT_PER_CLASS, **(per_class or {})}
    pool = pool if pool is not None else LazyExecutor(workers)
    pending: dict[str, PendingPhotoSet] = {}
    for split, images, labels in jobs:
        idx = stratified_indices(labels, per_class.get(split, 100), seed)
        imgs, labs = images[idx], labels[idx]
        path = cache_dir / f"{split}-{cache_key(split, imgs, labs, seed)}.npz" if cache_dir else None
        cached = _load_cached(path) if path is not None and path.is_file() else None
        futures = None
        if cached is None:
            seeds = [photo_seed(seed, split, int(i)) for i in idx]
            futures = [
                pool.submit(_render_chunk, imgs[i : i + chunk], seeds[i : i + chunk], split)
                for i in range(0, len(idx), chunk)
            ]
        pending[split] = PendingPhotoSet(split, labs, idx, seed, Rendering(path, cached, futures))
    return pending, pool.executor


def cache_dir(data_dir: str | Path) -> Path:
    """Where rendered photo sets are kept between runs: ``DATA_DIR/cache/photo-bench``."""
    return Path(data_dir) / "cache" / "photo-bench"


@dataclass(frozen=True)
class BenchmarkSizes:
    """How many photos of each set a run scores (``TrainConfig``'s photo and unfamiliar sizes; 0: not rendered)."""

    val_per_class: int
    test_per_class: int
    real_test_per_class: int = 0
    real_val_per_class: int = 0
    unfamiliar_test_per_kind: int = 0
    # the outlier-exposure head's sets (0: no head): unfamiliar train/val photos per kind, photos of training items
    # per class by each renderer (``train``, ``real_train``)
    head: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def of(cls, cfg: Any) -> BenchmarkSizes:
        head = (cfg.unfamiliar_train_per_kind, cfg.unfamiliar_val_per_kind, cfg.unfamiliar_fit_per_class)
        return cls(
            cfg.photo_val_per_class,
            cfg.photo_test_per_class,
            cfg.photo_real_test_per_class,
            cfg.photo_real_val_per_class,
            cfg.unfamiliar_test_per_kind,
            head if cfg.unfamiliar_score == "oe" else (0, 0, 0),
        )


UNFAMILIAR_TEST = "unfamiliar_test"  # the out-of-distribution benchmark's test photos among the pending sets
UNFAMILIAR_TRAIN, UNFAMILIAR_VAL = "unfamiliar_train", "unfamiliar_val"  # the outlier-exposure head's


def start_benchmark(
    splits: tuple[Any, Any, Any], *, data_dir: str | Path, seed: int, sizes: BenchmarkSizes, workers: int
) -> tuple[dict[str, Any], ProcessPoolExecutor | None]:
    """Start rendering (or load from the cache) the benchmark's photo sets, in one pool of ``workers`` processes:
    of ``splits`` (train, val, test), ``val`` and ``test`` photos, the real-surface slice (``real_val``,
    ``real_test``), the unfamiliar test photos (:data:`UNFAMILIAR_TEST`, :mod:`model_training.unfamiliar_bench`) and
    the outlier-exposure head's sets (photos of training items ``train`` and ``real_train``, :data:`UNFAMILIAR_TRAIN`,
    :data:`UNFAMILIAR_VAL`) where ``sizes`` asks for them."""
    from model_training.unfamiliar_bench import start_unfamiliar_set

    train, val, test = splits
    ood_train, ood_val, fit_per_class = sizes.head if train is not None else (0, 0, 0)
    per_class = {
        "val": sizes.val_per_class,
        "test": sizes.test_per_class,
        "real_val": sizes.real_val_per_class,
        "real_test": sizes.real_test_per_class,
        "train": fit_per_class,
        "real_train": fit_per_class,
    }
    named = (("val", val), ("test", test), ("real_val", val), ("real_test", test))
    named += (("train", train), ("real_train", train))
    jobs = [(s, x.images, x.labels) for s, x in named if per_class[s] > 0 or s in ("val", "test")]
    pool = LazyExecutor(workers)
    cache = cache_dir(data_dir)
    pending: dict[str, Any] = dict(start_rendering(jobs, seed=seed, per_class=per_class, cache_dir=cache, pool=pool)[0])
    for name, split, n in ((UNFAMILIAR_TEST, "test", sizes.unfamiliar_test_per_kind),
                           (UNFAMILIAR_VAL, "val", ood_val), (UNFAMILIAR_TRAIN, "train", ood_train)):  # fmt: skip
        if n > 0:
            pending[name] = start_unfamiliar_set(split, per_kind=n, seed=seed, cache_dir=cache, pool=pool)
    return pending, pool.executor


def real_kinds(photo_set: PhotoSet) -> list[list[str]]:
    """Per photo of a real-surface set, the kinds it is counted under: ``surface=<kind>`` and each difficulty
    (``same_brightness``, ``clutter``, ``cut``, ``handheld``, or ``plain`` for none). The parameters are the
    generator's first draws, so they are known without rendering."""
    from data_processing.real_photos import draw_real_params

    out = []
    for i in photo_set.indices:
        p = draw_real_params(np.random.default_rng(photo_seed(photo_set.seed, photo_set.split, int(i))))
        out.append([f"surface={p.surface}", *p.difficulties()])
    return out


def accuracy_by_kind(kinds: list[list[str]], right: np.ndarray) -> dict[str, tuple[float, int]]:
    """``{kind: (accuracy, photos)}`` over the kinds each photo is counted under."""
    groups: dict[str, list[int]] = {}
    for i, ks in enumerate(kinds):
        for k in ks:
            groups.setdefault(k, []).append(i)
    return {k: (float(right[v].mean()), len(v)) for k, v in sorted(groups.items())}


def seconds_left(pending: Any, workers: int) -> float:
    """Wall seconds the photos still pending would take at full speed on ``workers`` processes."""
    return sum(p.pending_photos() for p in pending) * PHOTO_CPU_SECONDS / max(1, workers)


def render_set(
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    per_class: int = 100,
    cache_dir: Path | None = None,
    workers: int = 2,
) -> PhotoSet:
    """Render (or load) one photo set and wait for it."""
    pending, executor = start_rendering(
        [(split, images, labels)], seed=seed, per_class={split: per_class}, cache_dir=cache_dir, workers=workers
    )
    try:
        return pending[split].result()
    finally:
        if executor is not None:
            executor.shutdown()


def failure_photos(split: str, images: np.ndarray, indices: np.ndarray, seed: int) -> list[Any]:
    """The rendered photos (Pillow images, upright) of ``images[indices]`` again, for a grid of failures."""
    from PIL import Image, ImageOps

    out = []
    for i in indices:
        photo = render(images[int(i)], photo_seed(seed, split, int(i)), split)
        img = Image.open(io.BytesIO(photo.data))
        img.draft("RGB", (256, 256))  # decode at a reduced scale: only a thumbnail is shown
        img = ImageOps.exif_transpose(img)
        img.thumbnail((160, 160))
        out.append(img.convert("RGB"))
    return out
