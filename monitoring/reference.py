"""The drift reference: per-item features of the validation split, logged with the training run.

It belongs to the model version: whoever serves version N loads it through version N's run
(:func:`load_reference_for_version`). It is never built from, nor updated by, live data.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from common.labels import NUM_CLASSES
from monitoring.features import item_features

REFERENCE_ARTIFACT_DIR = "drift"
REFERENCE_ARTIFACT = f"{REFERENCE_ARTIFACT_DIR}/reference.npz"


def _frozen_copy(values: Any) -> np.ndarray:
    arr = np.array(values, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"reference features must be 1-D per-item arrays, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Reference:
    """Per-item reference features (read-only copies: nothing, live data included, can change them)."""

    features: dict[str, np.ndarray]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {str(k): _frozen_copy(v) for k, v in self.features.items()}
        lengths = {a.shape[0] for a in frozen.values()}
        if len(lengths) > 1:
            raise ValueError(f"reference features have different lengths: {sorted(lengths)}")
        # A read-only mapping of read-only arrays; the caller's dict and arrays are not shared.
        object.__setattr__(self, "features", MappingProxyType(frozen))
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in dict(self.meta).items()})
        object.__setattr__(self, "_cache", {})

    def __len__(self) -> int:
        return int(next(iter(self.features.values())).shape[0]) if self.features else 0

    def cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """Memoise something derived from the (immutable) features, e.g. sorted values or PSI bins."""
        cache: dict[tuple[Any, ...], Any] = self._cache  # type: ignore[attr-defined]
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def sorted_feature(self, name: str) -> np.ndarray:
        """The finite values of one feature, sorted (cached, read-only): what the KS tests compare against."""

        def compute() -> np.ndarray:
            values = np.asarray(self.features[name], dtype=np.float64)
            out = np.sort(values[np.isfinite(values)])
            out.setflags(write=False)
            return out

        return self.cached(("sorted", name), compute)

    def class_counts(self, num_classes: int = NUM_CLASSES) -> np.ndarray:
        """Counts of each predicted class in the reference (feature ``predicted_class``)."""
        c = np.asarray(self.features["predicted_class"]).astype(np.int64)
        c = c[(c >= 0) & (c < num_classes)]
        return np.bincount(c, minlength=num_classes).astype(np.float64)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f"f__{k}": v for k, v in self.features.items()}
        np.savez_compressed(buf, __meta__=np.array(json.dumps(self.meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            feats = {k[3:]: npz[k] for k in npz.files if k.startswith("f__")}
            meta = json.loads(str(npz["__meta__"])) if "__meta__" in npz.files else {}
        return cls(features=feats, meta=meta)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        return cls.from_bytes(Path(path).read_bytes())


def build_reference(images: np.ndarray, probs: np.ndarray, **meta: str) -> Reference:
    """Reference from held-out (validation) images and the model's softmax outputs on them."""
    return Reference(features=item_features(images, probs), meta={k: str(v) for k, v in meta.items()})


def log_reference(reference: Reference) -> None:
    """Log the reference into the active MLflow run under ``drift/``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.npz"
        reference.save(path)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_ARTIFACT_DIR)


def load_reference_for_run(run_id: str, tracking_uri: str | None = None) -> Reference:
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        return Reference.load(local)


def load_reference_for_version(model_name: str, version: str, tracking_uri: str | None = None) -> Reference:
    """The reference logged by the training run that produced registered ``model_name`` version ``version``."""
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=tracking_uri).get_model_version(model_name, str(version))
    return load_reference_for_run(mv.run_id, tracking_uri=tracking_uri)
