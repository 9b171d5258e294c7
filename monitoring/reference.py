"""The drift reference: per-item features of the validation split, logged with the training run.

It belongs to the model version: whoever serves version N loads it through version N's run
(:func:`load_reference_for_version`). It is never built from, nor updated by, live data.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitoring.features import item_features

REFERENCE_ARTIFACT_DIR = "drift"
REFERENCE_ARTIFACT = f"{REFERENCE_ARTIFACT_DIR}/reference.npz"


@dataclass(frozen=True)
class Reference:
    features: dict[str, np.ndarray]
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.features.values())).shape[0]) if self.features else 0

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
