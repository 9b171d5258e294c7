"""One typed settings object, read from the environment (12-factor); CLI flags override it.

Variable names are part of the contract with operators and later stages:

=====================  ==========================================================  =============================
variable               meaning                                                     default
=====================  ==========================================================  =============================
STORAGE_URI            where images, processed data and predictions live           ``<project>/data/store``
AWS_ENDPOINT_URL       boto3's own: any S3-compatible endpoint (moto, MinIO, ...)  AWS
MLFLOW_TRACKING_URI    MLflow's own: tracking + registry store                     ``sqlite:///<project>/mlflow.db``
FASHION_MNIST_DIR      local copy of the four IDX ``.gz`` files                    download from Zalando
DATA_DIR               local working folder (raw export, caches)                   ``<project>/data``
MODEL_NAME             registered model name                                       ``refund-item-classifier``
MODEL_URI              model the API and batch job serve                           ``models:/<MODEL_NAME>@champion``
REVIEW_THRESHOLD       confidence below which an item ``needs_review``             ``0.7``
=====================  ==========================================================  =============================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "refund-item-classifier"


def _default_data_dir() -> Path:
    return PROJECT_ROOT / "data"


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every stage. Build with :meth:`from_env`, override with :meth:`with_overrides`."""

    data_dir: Path = field(default_factory=_default_data_dir)
    storage_uri: str = ""
    aws_endpoint_url: str | None = None
    mlflow_tracking_uri: str = ""
    fashion_mnist_dir: Path | None = None
    model_name: str = MODEL_NAME
    model_uri: str = ""
    review_threshold: float = 0.7

    def __post_init__(self) -> None:
        # Derived defaults depend on data_dir / model_name, so they are filled here, once.
        if not self.storage_uri:
            object.__setattr__(self, "storage_uri", str(Path(self.data_dir) / "store"))
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
        if not self.model_uri:
            object.__setattr__(self, "model_uri", f"models:/{self.model_name}@champion")
        if not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError(f"REVIEW_THRESHOLD must be in [0, 1], got {self.review_threshold}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        kwargs: dict[str, Any] = {}
        if (v := get("DATA_DIR")) is not None:
            kwargs["data_dir"] = Path(v).expanduser().resolve()
        if (v := get("STORAGE_URI")) is not None:
            kwargs["storage_uri"] = v
        if (v := get("AWS_ENDPOINT_URL")) is not None:
            kwargs["aws_endpoint_url"] = v
        if (v := get("MLFLOW_TRACKING_URI")) is not None:
            kwargs["mlflow_tracking_uri"] = v
        if (v := get("FASHION_MNIST_DIR")) is not None:
            kwargs["fashion_mnist_dir"] = Path(v).expanduser().resolve()
        if (v := get("MODEL_NAME")) is not None:
            kwargs["model_name"] = v
        if (v := get("MODEL_URI")) is not None:
            kwargs["model_uri"] = v
        if (v := get("REVIEW_THRESHOLD")) is not None:
            try:
                kwargs["review_threshold"] = float(v)
            except ValueError as exc:
                raise ValueError(f"REVIEW_THRESHOLD must be a number, got {v!r}") from exc
        return cls(**kwargs)

    def with_overrides(self, **overrides: Any) -> Settings:
        """Return a copy with every non-None override applied (CLI flags beat the environment)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **clean)
