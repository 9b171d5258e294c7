"""The out-of-distribution benchmark: things that are not one of the 10 classes, photographed, preprocessed, scored.

Usage: imported by ``benchmarks/bench_unfamiliar.py`` and by training (``model_training.report``):
``render_unfamiliar_set("test", per_kind=200, seed=2026, cache_dir=...)`` -> :class:`UnfamiliarSet` of 28x28 model
images with their kinds; :func:`evaluate_scores` -> per score, the threshold that flags a share of the
in-distribution validation images, and per kind of unfamiliar photo the share it catches and the AUROC;
:func:`head_data`, :func:`fit_head`, :func:`leave_one_kind_out`: the outlier-exposure head's rows, its fit, and how
it does on a kind it never saw.

Each photo is rendered by :func:`data_processing.unfamiliar_photos.render_unfamiliar` with the generator seed
``(seed, split tag, kind, index)`` and brought through THE preprocessing (``preprocess_bytes``) as the API would.
Like the photo benchmark, the 28x28 results are cached (``DATA_DIR/cache/photo-bench/unfamiliar-<split>-<key>.npz``),
keyed by the seed, the sizes and the source code of every renderer involved and of the preprocessing.
"""

from __future__ import annotations

import hashlib
import inspect
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Part of every photo's seed, apart from the photo benchmark's tags. "train": the photos the outlier-exposure head is
# fitted on; "val" chooses its penalty; "test" reports.
SPLIT_TAGS = {"val": 21, "test": 22, "train": 23}
DEFAULT_PER_KIND = {"val": 100, "test": 200, "train": 150}
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


class PendingUnfamiliarSet:
    """An unfamiliar set being rendered (or loaded from the cache); :meth:`result` waits for it (the interface of
    :class:`model_training.photo_bench.PendingPhotoSet`)."""

    def __init__(self, split: str, jobs: list, path: Path | None, cached: UnfamiliarSet | None, futures: list) -> None:
        self.split, self._jobs, self._path, self._cached, self._futures = split, jobs, path, cached, futures

    @property
    def from_cache(self) -> bool:
        return self._cached is not None

    def pending_photos(self) -> int:
        if self._cached is not None or not self._futures:
            return 0
        per_chunk = -(-len(self._jobs) // len(self._futures))
        return min(len(self._jobs), sum(not f.done() for f in self._futures) * per_chunk)

    def result(self) -> UnfamiliarSet:
        if self._cached is not None:
            return self._cached
        rendered = [img for fut in self._futures for img in fut.result()]
        ok = [i for i, img in enumerate(rendered) if img is not None]
        images = np.stack([rendered[i] for i in ok]).astype(np.uint8)
        kinds = np.array([self._jobs[i][0] for i in ok])
        self._cached = UnfamiliarSet(self.split, images, kinds, len(self._jobs) - len(ok))
        if self._path is not None:
            from common.storage import atomic_write

            buf = io.BytesIO()
            np.savez_compressed(buf, images=images, kinds=kinds, failed=np.int64(self._cached.failed))
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path, buf.getvalue())
        return self._cached


def start_unfamiliar_set(
    split: str, *, per_kind: int, seed: int, cache_dir: Path | None = None, pool: Any = None, chunk: int = 25
) -> PendingUnfamiliarSet:
    """Start rendering ``per_kind`` photos of every kind (:data:`~data_processing.unfamiliar_photos.KINDS`) in
    ``pool`` (a :class:`~model_training.render_pool.LazyExecutor`), or load them from ``cache_dir``."""
    from data_processing.unfamiliar_photos import KINDS

    path = cache_dir / f"unfamiliar-{split}-{cache_key(split, per_kind, seed)}.npz" if cache_dir else None
    jobs = [(k, (seed, SPLIT_TAGS[split], j, i)) for j, k in enumerate(KINDS) for i in range(per_kind)]
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            cached = UnfamiliarSet(split, npz["images"], npz["kinds"], int(npz["failed"]))
        return PendingUnfamiliarSet(split, jobs, path, cached, [])
    futures = [pool.submit(_render_chunk, jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)]
    return PendingUnfamiliarSet(split, jobs, path, None, futures)


def render_unfamiliar_set(
    split: str, *, per_kind: int, seed: int, cache_dir: Path | None = None, workers: int = 2
) -> UnfamiliarSet:
    """:func:`start_unfamiliar_set` in ``workers`` processes of its own, and wait for it."""
    from model_training.render_pool import LazyExecutor

    pool = LazyExecutor(workers)
    try:
        return start_unfamiliar_set(split, per_kind=per_kind, seed=seed, cache_dir=cache_dir, pool=pool).result()
    finally:
        if pool.executor is not None:
            pool.executor.shutdown()


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


# --- in every training run: the statistics the served model needs, its threshold, and the benchmark's numbers ----


def fit_unfamiliarity(network: Any, train: Any, references: list[np.ndarray]) -> Any:
    """:class:`~inference.unfamiliarity.UnfamiliarityStats` of ``network`` (a calibrated network with a ``logits``
    layer): the Gaussians of its penultimate features on the training split, the standardiser on the in-distribution
    validation images ``references`` (the clean validation split and the validation photos)."""
    from inference.unfamiliarity import FeatureExtractor, fit_stats

    extract = FeatureExtractor(network)
    train_features, _ = extract(train.images)
    parts = [extract(x) for x in references if len(x)]
    return fit_stats(train_features, train.labels, np.concatenate([f for f, _ in parts]),
                     np.concatenate([z for _, z in parts]))  # fmt: skip


def choose_threshold(photo_scores: np.ndarray, share: float, z: float) -> tuple[float, float]:
    """The threshold that flags ``share`` of the in-distribution validation photos lowered by ``z`` standard errors
    (so it holds on new photos with margin), and that lowered share."""
    from inference.unfamiliarity import threshold_at_share
    from model_training.evaluation import share_with_margin

    aim = share_with_margin(share, len(photo_scores), z)
    return threshold_at_share(photo_scores, aim), aim


def unfamiliar_metrics(
    threshold: float,
    flagged: Mapping[str, np.ndarray],
    ood: UnfamiliarSet,
    ood_scores: np.ndarray,
    reference: np.ndarray,
) -> dict[str, float]:
    """``unfamiliar_share_<set>`` for each in-distribution set in ``flagged`` (set -> scores); over the unfamiliar
    photos, ``unfamiliar_caught`` and ``unfamiliar_auroc`` (against the in-distribution ``reference`` scores, the
    test photos), overall and ``_<kind>``, and how many there were."""
    from inference.unfamiliarity import auroc

    out = {f"unfamiliar_share_{name}": float(np.mean(s > threshold)) for name, s in flagged.items() if len(s)}
    out["unfamiliar_test_photos"] = float(len(ood))
    out["unfamiliar_test_failed"] = float(ood.failed)
    for kind in ["all", *dict.fromkeys(ood.kinds.tolist())]:
        sel = np.ones(len(ood), bool) if kind == "all" else ood.kinds == kind
        suffix = "" if kind == "all" else f"_{kind}"
        out[f"unfamiliar_caught{suffix}"] = float(np.mean(ood_scores[sel] > threshold))
        out[f"unfamiliar_auroc{suffix}"] = auroc(reference, ood_scores[sel])
    return out


# --- outlier exposure: the head's data, its fit, and how it does on kinds it never saw ----------------------------


@dataclass(frozen=True)
class HeadData:
    """The outlier-exposure head's rows (:func:`inference.unfamiliarity.head_rows`): it is fitted on in-distribution
    images that are NOT the validation photos (photos of training items, some clean training images) against the
    unfamiliar training photos, and its penalty is chosen on the in-distribution validation photos (which choose
    the threshold too) against the unfamiliar validation photos."""

    fit_in: np.ndarray
    fit_out: np.ndarray
    fit_out_kinds: np.ndarray
    val_in: np.ndarray
    val_out: np.ndarray
    val_out_kinds: np.ndarray

    def without(self, kind: str) -> HeadData:
        """The same rows without the unfamiliar photos of ``kind`` (fit and validation alike)."""
        keep_fit, keep_val = self.fit_out_kinds != kind, self.val_out_kinds != kind
        return HeadData(self.fit_in, self.fit_out[keep_fit], self.fit_out_kinds[keep_fit], self.val_in,
                        self.val_out[keep_val], self.val_out_kinds[keep_val])  # fmt: skip


@dataclass(frozen=True)
class HeadImages:
    """The images behind :class:`HeadData`: 28x28 uint8 in-distribution images to fit on and to choose on, and the
    unfamiliar training and validation photos."""

    fit_in: list[np.ndarray]
    val_in: list[np.ndarray]
    ood_train: UnfamiliarSet
    ood_val: UnfamiliarSet


def head_data(network: Any, stats: Any, images: HeadImages) -> HeadData:
    """The head's rows of ``images`` through ``network`` (a calibrated network with a ``logits`` layer)."""
    from inference.unfamiliarity import FeatureExtractor, head_rows

    extract = FeatureExtractor(network)

    def rows(batches: list[np.ndarray]) -> np.ndarray:
        return head_rows(*extract(np.concatenate([b for b in batches if len(b)])), stats)

    return HeadData(rows(images.fit_in), rows([images.ood_train.images]), images.ood_train.kinds,
                    rows(images.val_in), rows([images.ood_val.images]), images.ood_val.kinds)  # fmt: skip


def fit_head(data: HeadData, dims: int, share: float = FLAG_SHARE) -> Any:
    """:class:`~inference.unfamiliarity.HeadChoice`: the head fitted on ``data``'s fit rows, its penalty chosen on
    its validation rows (the share caught at the threshold flagging ``share`` of the in-distribution ones)."""
    from inference.unfamiliarity import choose_head

    return choose_head((data.fit_in, data.fit_out), (data.val_in, data.val_out), dims, share)


def leave_one_kind_out(data: HeadData, dims: int, share: float = FLAG_SHARE) -> dict[str, Any]:
    """Per kind of unfamiliar photo, the head fitted and chosen without any photo of that kind: how the head does
    on a kind of thing it never saw (the warehouse will meet things the benchmark does not have)."""
    return {k: fit_head(data.without(k), dims, share).head for k in dict.fromkeys(data.fit_out_kinds.tolist())}


def clean_subsample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images of a clean split chosen by a seeded permutation (all of them if it has fewer)."""
    return images[np.sort(np.random.default_rng(seed).permutation(len(images))[:n])]
