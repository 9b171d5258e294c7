"""The one settings object: every variable the project reads from the environment (12-factor), typed, grouped by
stage; each script's flags override it. Nothing else reads ``os.environ`` for a project setting.

Variable names are the contract with operators (README, docs). Third-party variables are honoured where their
libraries look for them (``AWS_*`` by boto3, ``MLFLOW_HTTP_*`` by MLflow, ``PROMETHEUS_MULTIPROC_DIR`` by
prometheus_client); the ones the project itself decides with are read here (``MLFLOW_TRACKING_URI``,
``AWS_ENDPOINT_URL``, ``RAY_ADDRESS``).

Build with :meth:`Settings.from_env`; override core fields with :meth:`Settings.with_overrides` and a group with
``dataclasses.replace(settings, serving=replace(settings.serving, port=8080))``. ``python -m common.settings``
prints every variable, its meaning and its current value (secrets masked).
"""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "refund-item-classifier"

G = TypeVar("G")
# The inference runtimes a process can be told to use (inference.loading.RUNTIMES; a test keeps the two equal).
RUNTIME_CHOICES = ("auto", "exported", "keras", "litert-int8", "onnx", "litert")


def env(name: str, default: Any = None, doc: str = "", *, secret: bool = False) -> Any:
    """A settings field read from environment variable ``name`` (empty counts as unset)."""
    return field(default=default, metadata={"env": name, "doc": doc, "secret": secret})


def _cast(kind: Any, raw: str, name: str) -> Any:
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    target = options[0]
    try:
        if target is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target is Path:
            return Path(raw).expanduser().resolve()
        return target(raw)
    except ValueError as exc:
        what = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}.get(target, "a string")
        raise ValueError(f"{name} must be {what}, got {raw!r}") from exc


def _read(cls: type[G], environ: Mapping[str, str]) -> G:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("env")
        raw = environ.get(name) if name else None
        if raw not in (None, ""):
            kwargs[f.name] = _cast(hints[f.name], raw, name)
    return cls(**kwargs)


@dataclass(frozen=True)
class ServingSettings:
    """The API server and app (``model_serving``)."""

    host: str = env("SERVING_HOST", "127.0.0.1", "bind address")
    port: int = env("SERVING_PORT", 5001, "port")
    workers: int = env("SERVING_WORKERS", os.cpu_count() or 1, "worker processes, each with its own model")
    max_upload_bytes: int = env("SERVING_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, "largest request body (413 above)")
    max_files: int = env("SERVING_MAX_FILES", 32, "most images in one request (413 above)")
    body_buffer_bytes: int = env(
        "SERVING_BODY_BUFFER_BYTES", 160 * 1024 * 1024, "request bodies one worker holds in all (503 above)"
    )
    client_buffer_bytes: int = env(
        "SERVING_CLIENT_BUFFER_BYTES",
        64 * 1024 * 1024,
        "request bodies one worker holds per client address (429 above)",
    )
    # The decoding limits: unset means data_processing.preprocessing's own defaults (50 MP declared, 4096^2
    # decoded at full scale, 4 x 4096^2 per request, 10 s per request).
    max_pixels: int | None = env("SERVING_MAX_PIXELS", None, "most pixels an image may declare (413 above)")
    max_decode_pixels: int | None = env("SERVING_MAX_DECODE_PIXELS", None, "most pixels decoded at full scale")
    max_request_pixels: int | None = env(
        "SERVING_MAX_REQUEST_PIXELS", None, "most pixels decoded for all images of a request"
    )
    decode_seconds: float | None = env("SERVING_DECODE_SECONDS", None, "decoding time budget of a request")
    poll_seconds: float = env("MODEL_POLL_SECONDS", 30.0, "re-resolve the model alias this often (0: never)")
    admin_token: str = env("ADMIN_TOKEN", "", "bearer token of POST /admin/reload (unset: disabled)", secret=True)
    test_traffic_token: str = env(
        "SERVING_TEST_TRAFFIC_TOKEN",
        "",
        "requests with X-Test-Traffic: <this> stay out of the drift window and class mix (unset: none do)",
        secret=True,
    )
    drift_window_size: int = env("DRIFT_WINDOW_SIZE", 500, "items in the drift window")
    drift_min_window: int = env("DRIFT_MIN_WINDOW", 100, "fewer items: insufficient_data")
    drift_alpha: float = env("DRIFT_ALPHA", 0.05, "family-wise false-alarm rate of the drift tests")
    runtime: str = env(
        "SERVING_RUNTIME",
        "auto",
        "auto (the fastest here at batch 1), exported (the export's preferred), keras, litert-int8, litert or onnx",
    )
    model_cache: str = env(
        "SERVING_MODEL_CACHE", "", "local copy of the last version loaded ('' = <DATA_DIR>/model-cache, 'off')"
    )
    runtime_threads: int = env("SERVING_TF_THREADS", 0, "threads of a worker's runtime (0: the runtime's default)")
    runtime_dir: Path | None = env("SERVING_RUNTIME_DIR", None, "shared runtime folder (default: a new temp dir)")
    window_dir: Path | None = env("DRIFT_WINDOW_DIR", None, "shared drift-window folder (default: in the runtime dir)")

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"SERVING_RUNTIME must be one of {', '.join(RUNTIME_CHOICES)}, got {self.runtime!r}")
        for name in (
            "port",
            "workers",
            "max_upload_bytes",
            "max_files",
            "drift_window_size",
            "body_buffer_bytes",
            "client_buffer_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainingSettings:
    """Defaults of ``model_training/train.py``'s flags; unset means the recipe's own default (``TrainConfig``)."""

    epochs: int | None = env("TRAIN_EPOCHS", None, "training epochs")
    batch_size: int | None = env("TRAIN_BATCH_SIZE", None, "mini-batch size")
    learning_rate: float | None = env("TRAIN_LEARNING_RATE", None, "peak learning rate")
    seed: int | None = env("TRAIN_SEED", None, "seed of init, shuffling and augmentation")
    arch: str | None = env("TRAIN_ARCH", None, "architecture")
    tta: str | None = env("TRAIN_TTA", None, "test-time views of the served model")
    precision: str | None = env(
        "TRAIN_PRECISION", None, "training arithmetic: auto (from the CPU), mixed_bfloat16 or float32"
    )
    ema_decay: float | None = env("TRAIN_EMA_DECAY", None, "decay of the served weight average (0 = off)")
    time_budget: float | None = env("TRAIN_TIME_BUDGET", None, "seconds for a whole training run (0 = off)")
    experiment: str | None = env("MLFLOW_EXPERIMENT_NAME", None, "MLflow experiment of training runs")


@dataclass(frozen=True)
class BatchSettings:
    """The nightly job (``batch_prediction``)."""

    input_prefix: str = env("BATCH_INPUT_PREFIX", "incoming/", "where the nightly job looks for photos")
    max_object_bytes: int = env(
        "BATCH_MAX_OBJECT_BYTES", 20 * 1024 * 1024, "larger inputs are quarantined unread (object_too_large)"
    )
    ray_address: str | None = env("RAY_ADDRESS", None, "Ray cluster for --engine ray (unset: a local Ray)")
    runtime: str = env("BATCH_RUNTIME", "auto", "auto (the fastest here at the night's batch size), or one by name")

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"BATCH_RUNTIME must be one of {', '.join(RUNTIME_CHOICES)}, got {self.runtime!r}")


def _default_data_dir() -> Path:
    return PROJECT_ROOT / "data"


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every stage, and each stage's own group."""

    data_dir: Path = field(default_factory=_default_data_dir, metadata={"env": "DATA_DIR", "doc": "local folder"})
    storage_uri: str = env("STORAGE_URI", "", "images, processed data, predictions, ledger (s3://bucket/prefix: S3)")
    aws_endpoint_url: str | None = env("AWS_ENDPOINT_URL", None, "an S3-compatible endpoint (MinIO, moto, ...)")
    mlflow_tracking_uri: str = env("MLFLOW_TRACKING_URI", "", "MLflow tracking and registry store")
    fashion_mnist_dir: Path | None = env("FASHION_MNIST_DIR", None, "local copy of the four IDX .gz files")
    model_name: str = env("MODEL_NAME", MODEL_NAME, "registered model name")
    model_uri: str = env("MODEL_URI", "", "the model the API and the batch job serve")
    review_threshold: float | None = env(
        "REVIEW_THRESHOLD",
        None,
        "confidence below which an item needs_review (unset: the served version's own, chosen when it was trained)",
    )
    log_level: str | None = env("LOG_LEVEL", None, "log level (DEBUG, INFO, WARNING; default INFO, -v: DEBUG)")
    cpu_assume: str | None = env(
        "CPU_ASSUME", None, "avx2: act as on an AVX2-only CPU (hardware choices, TensorFlow kernels); unset: detect"
    )
    serving: ServingSettings = field(default_factory=ServingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self) -> None:
        # Derived defaults depend on data_dir / model_name, so they are filled here, once.
        if not self.storage_uri:
            object.__setattr__(self, "storage_uri", str(Path(self.data_dir) / "store"))
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
        if not self.model_uri:
            object.__setattr__(self, "model_uri", f"models:/{self.model_name}@champion")
        if self.cpu_assume is not None and self.cpu_assume not in ("avx2",):
            raise ValueError(f"CPU_ASSUME must be avx2 or unset, got {self.cpu_assume!r}")
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ValueError(f"REVIEW_THRESHOLD must be in [0, 1], got {self.review_threshold}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every group from ``environ`` (default: the process environment); raises ValueError naming a bad one."""
        source = os.environ if environ is None else environ
        core = _read(cls, source)
        return replace(
            core,
            serving=_read(ServingSettings, source),
            training=_read(TrainingSettings, source),
            batch=_read(BatchSettings, source),
        )

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with every non-None override applied (CLI flags beat the environment)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **clean)


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, current value, meaning) of every setting, secrets masked."""
    rows = []
    for group in (settings, settings.serving, settings.training, settings.batch):
        for f in fields(group):
            name = f.metadata.get("env")
            if not name:
                continue
            value = getattr(group, f.name)
            shown = "***" if f.metadata.get("secret") and value else ("" if value is None else str(value))
            rows.append((name, shown, f.metadata.get("doc", "")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Usage: python -m common.settings -- every variable the project reads, its current value and meaning.

    Exit codes: 0 printed; 2 a variable has an invalid value (named in the message)."""
    import argparse

    argparse.ArgumentParser(prog="python -m common.settings", description=main.__doc__).parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value, doc in describe(settings):
        print(f"{name:<28} {value:<40} {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
