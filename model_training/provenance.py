"""Where a run came from, logged with it: git commit and dirtiness, package versions, the logged model's pinned
requirements, every param, and the dataset inputs with their content digests."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import warnings
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mlflow
import mlflow.data

from common.settings import PROJECT_ROOT, Settings
from data_processing.dataset import split_key
from inference.records import review_threshold_for
from model_training.config import TrainConfig


def git_info() -> dict[str, str]:
    """Commit and dirtiness of the project checkout ('unknown' outside git)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD") or "unknown"
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def package_versions() -> dict[str, str]:

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model (skips MLflow's slow module-capture subprocess)."""

    out = []
    for pkg in ("mlflow", "keras", "tensorflow-cpu", "numpy"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            if pkg == "tensorflow-cpu":  # the GPU/full wheel provides the same modules
                with contextlib.suppress(PackageNotFoundError):
                    out.append(f"tensorflow=={version('tensorflow')}")
    return out


def _dataset_input(split: Any, name: str, source: str) -> Any:

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways" for local paths
        try:
            return mlflow.data.from_numpy(
                split.images, targets=split.labels, source=source, name=name, digest=split.digest()
            )
        except Exception:  # an unresolvable source must not fail the run: keep name + digest
            return mlflow.data.from_numpy(split.images, targets=split.labels, name=name, digest=split.digest())


def _split_source(settings: Settings, name: str) -> str:

    uri = settings.storage_uri.rstrip("/")
    return f"{uri}/{split_key(name)}"


def log_run_inputs(settings: Settings, cfg: TrainConfig, train: Any, val: Any, test: Any, threads: int) -> None:
    """Tags (provenance), params (every knob, sizes, digests) and the dataset inputs of the active run."""

    git = git_info()
    versions = package_versions()
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": git["git_commit"],
            **git,
            **{f"version.{k}": v for k, v in versions.items()},
            "model_name": settings.model_name,
        }
    )
    params = {k: v for k, v in asdict(cfg).items() if k not in ("extra",)}
    params.update(cfg.extra)
    params.update(
        {
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "tf_intra_op_threads": threads,
            "lr_schedule": "linear warm-up + cosine to 0",
            "train_digest": train.digest(),
            "val_digest": val.digest(),
            "test_digest": test.digest(),
            "review_threshold": review_threshold_for(settings.review_threshold),
        }
    )
    mlflow.log_params({k: "None" if v is None else v for k, v in params.items()})
    for split, name, context in ((train, "train", "training"), (val, "val", "validation"), (test, "test", "testing")):
        mlflow.log_input(_dataset_input(split, f"fashion-mnist-{name}", _split_source(settings, name)), context=context)


def log_warehouse_input(settings: Settings, warehouse: Any) -> None:
    """The labelled warehouse photos a run used (``model_training.warehouse.WarehouseData``): the label set's digest
    and counts as params, and each share as a dataset input beside the Fashion-MNIST splits."""
    mlflow.log_params(warehouse.params())
    source = f"{settings.storage_uri.rstrip('/')}/labels/"
    for name, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        split = warehouse.splits[name]
        if len(split):
            mlflow.log_input(_dataset_input(split, f"warehouse-labels-{name}", source), context=context)
