"""The out-of-distribution benchmark: things that are not one of the 10 classes, photographed, preprocessed, scored.

Usage: imported by ``benchmarks/bench_unfamiliar.py`` (and, later, by training):
``render_unfamiliar_set("test", per_kind=200, seed=2026, cache_dir=...)`` -> :class:`UnfamiliarSet` of 28x28 model
images with their kinds; :func:`evaluate_scores` -> per score, the threshold that flags a share of the
in-distribution validation images, and per kind of unfamiliar photo the share it catches and the AUROC.

Each photo is rendered by :func:`data_processing.unfamiliar_photos.render_unfamiliar` with the generator seed
``(seed, split tag, kind, index)`` and brought through THE preprocessing (``preprocess_bytes``) as the API would.
Like the photo benchmark, the 28x28 results are cached (``DATA_DIR/cache/photo-bench/unfamiliar-<split>-<key>.npz``),
keyed by the seed, the sizes and the source code of every renderer involved and of the preprocessing.
"""

from __future__ import annotations

import hashlib
import inspect
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_TAGS = {"val": 21, "test": 22}  # part of every photo's seed, apart from the photo benchmark's tags
DEFAULT_PER_KIND = {"val": 100, "test": 200}
FLAG_SHARE = 0.05  # the share of in-distribution validation images a threshold is chosen to flag


@dataclass(frozen=True)
class UnfamiliarSet:
    split: str
    images: np.ndarray  # (N, 28, 28) uint8, what the model sees
    kinds: np.ndarray  # (N,) str
    failed: int = 0  # photos the preprocessing refused (left out)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _render_chunk(jobs: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray | None]:
    from data_processing.preprocessing import ImageError, preprocess_bytes
    from data_processing.unfamiliar_photos import render_unfamiliar

    out: list[np.ndarray | None] = []
    for kind, seed in jobs:
        try:
            out.append(preprocess_bytes(render_unfamiliar(kind, seed).data))
        except ImageError:
            out.append(None)
    return out


def cache_key(split: str, per_kind: int, seed: int) -> str:
    from data_processing import photo_sources, photos, preprocessing, real_photos, unfamiliar_photos

    h = hashlib.sha256(f"{split}:{per_kind}:{seed}:{unfamiliar_photos.UNFAMILIAR_VERSION}".encode())
    for module in (unfamiliar_photos, photos, real_photos, photo_sources, preprocessing):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:20]


def render_unfamiliar_set(
    split: str, *, per_kind: int, seed: int, cache_dir: Path | None = None, workers: int = 2
) -> UnfamiliarSet:
    """``per_kind`` photos of every kind (:data:`~data_processing.unfamiliar_photos.KINDS`), rendered and
    preprocessed in ``workers`` spawned processes, or loaded from ``cache_dir``."""
    from data_processing.unfamiliar_photos import KINDS

    path = cache_dir / f"unfamiliar-{split}-{cache_key(split, per_kind, seed)}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            return UnfamiliarSet(split, npz["images"], npz["kinds"], int(npz["failed"]))
    jobs = [(k, (seed, SPLIT_TAGS[split], j, i)) for j, k in enumerate(KINDS) for i in range(per_kind)]
    chunks = [jobs[i : i + 25] for i in range(0, len(jobs), 25)]
    with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        rendered = [img for part in pool.map(_render_chunk, chunks) for img in part]
    ok = [i for i, img in enumerate(rendered) if img is not None]
    images = np.stack([rendered[i] for i in ok]).astype(np.uint8)
    kinds = np.array([jobs[i][0] for i in ok])
    result = UnfamiliarSet(split, images, kinds, len(jobs) - len(ok))
    if path is not None:
        import io

        from common.storage import atomic_write

        buf = io.BytesIO()
        np.savez_compressed(buf, images=images, kinds=kinds, failed=np.int64(result.failed))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    return result


@dataclass(frozen=True)
class ScoreReport:
    """One score's numbers: its threshold (chosen on in-distribution validation images), the share of each
    in-distribution set it flags, and per kind of unfamiliar photo the share caught and the AUROC."""

    score: str
    threshold: float
    flagged: dict[str, float]  # in-distribution set -> share flagged
    caught: dict[str, float]  # kind -> share flagged ("all": every unfamiliar photo)
    auroc: dict[str, float]  # kind -> AUROC against the in-distribution validation images


def evaluate_scores(
    in_val: np.ndarray,
    in_sets: Mapping[str, np.ndarray],
    ood: Mapping[str, np.ndarray],
    ood_kinds: np.ndarray,
    share: float = FLAG_SHARE,
) -> list[ScoreReport]:
    """For every score: ``in_val`` (score -> values on the in-distribution validation images) chooses the threshold
    flagging ``share`` of them; ``in_sets`` (set -> score -> values) says what it flags elsewhere; ``ood`` (score ->
    values on the unfamiliar photos, kinds in ``ood_kinds``) what it catches."""
    from inference.unfamiliarity import auroc, threshold_at_share

    reports = []
    for score, values in in_val.items():
        t = threshold_at_share(values, share)
        flagged = {name: float(np.mean(s[score] > t)) for name, s in in_sets.items()}
        caught, areas = {}, {}
        for kind in ["all", *dict.fromkeys(ood_kinds.tolist())]:
            sel = np.ones(len(ood_kinds), bool) if kind == "all" else ood_kinds == kind
            caught[kind] = float(np.mean(ood[score][sel] > t))
            areas[kind] = auroc(values, ood[score][sel])
        reports.append(ScoreReport(score, t, flagged, caught, areas))
    return reports
