"""``--engine ray``: the same scoring on Ray Data, for nights too big for one machine.

Joins the cluster ``RAY_ADDRESS`` names, or starts a local Ray (``num_cpus`` CPUs, no dashboard). Each
scoring actor opens the store and loads the pinned model version ONCE (``map_batches`` with a callable
class), then reads, preprocesses (THE preprocessing function) and scores whole batches. Results stream back
to the driver in input order, where the job writes the same outputs and ledger as the local engine.
On a multi-node cluster every node needs this project installed (same virtualenv layout) and access to
the store (S3) and the MLflow server, with its own credentials: the runtime env carries no secrets.

Ray is optional (``pip install -r requirements-ray.txt``); it is imported only here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_prediction.outputs import Failure
from batch_prediction.reading import MAX_OBJECT_BYTES, LoadedBatch, StoreAddress, load_batch
from common.resources import peak_rss_mb
from common.storage import ObjectInfo, open_storage
from inference.choice import ServingPath
from inference.classifier import ColumnAnswer, Thresholds, score_images
from inference.loading import load_predictor
from inference.predictor import Scores

log = logging.getLogger(__name__)


class RayUnavailable(RuntimeError):
    """Ray is not installed."""


# Forwarded to the actors through the runtime env (which the cluster stores and shows): the job's settings, never
# its secrets. Credentials come from the nodes themselves: an instance role or an AWS profile for S3,
# MLFLOW_TRACKING_USERNAME/PASSWORD or a token in the nodes' environment for the registry (docs/batch.md).
_FORWARDED_PREFIXES = ("AWS_", "MLFLOW_", "STORAGE_", "MODEL_", "DATA_DIR")
_SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE")


def strip_userinfo(uri: str) -> str:
    """``scheme://user:secret@host/...`` -> ``scheme://host/...`` (other URIs unchanged)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables the actors get: the job's settings without credentials (pure)."""
    out = {}
    for name, value in environ.items():
        if not name.startswith(_FORWARDED_PREFIXES) or name in _SECRET_NAMES:
            continue
        if any(word in name.upper() for word in _SECRET_WORDS):
            continue
        out[name] = strip_userinfo(value) if "://" in value else value
    return out


def _prepare_token_auth(environ: MutableMapping[str, str]) -> None:
    """Join a cluster that uses Ray's token authentication. ``ray start --head`` turns it on when a token exists
    (``ray get-auth-token --generate``), but a driver given an explicit address (RAY_ADDRESS) does not, and fails
    with "Authentication token is missing or incorrect". Turn it on when a token is at hand and the operator has
    not chosen (RAY_AUTH_MODE); must run before Ray is imported."""
    if not environ.get("RAY_ADDRESS") or "RAY_AUTH_MODE" in environ:
        return
    path = environ.get("RAY_AUTH_TOKEN_PATH") or str(Path(environ.get("HOME") or Path.home()) / ".ray" / "auth_token")
    if environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        environ["RAY_AUTH_MODE"] = "token"


def _import_ray():
    _prepare_token_auth(os.environ)
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailable("--engine ray needs Ray Data: .venv/bin/pip install -r requirements-ray.txt") from exc
    return ray


def require_ray() -> None:
    """Raise :class:`RayUnavailable` now, before anything is started, when Ray Data is not installed."""
    _import_ray()


class _Scorer:
    """One Ray actor: store client and model loaded once, then batch after batch."""

    def __init__(
        self, storage_uri: str, endpoint_url: str | None, model: dict[str, Any], tracking_uri: str, max_bytes: int
    ) -> None:
        """``model``: ``uri`` (pinned), ``runtime`` (as ``--runtime``) and ``batch`` (the size it is chosen for)."""
        self.storage = open_storage(storage_uri, endpoint_url=endpoint_url)
        path = ServingPath("batch", int(model["batch"]))
        self.predictor = load_predictor(model["uri"], tracking_uri, runtime=model["runtime"], path=path)
        self.max_bytes = max_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = [
            ObjectInfo(key=str(k), size=int(s), md5=str(m) or None, kind=str(kind))
            for k, s, m, kind in zip(batch["key"], batch["size"], batch["md5"], batch["kind"], strict=True)
        ]
        loaded = load_batch(self.storage, infos, max_bytes=self.max_bytes)
        scores = score_images(self.predictor, loaded.images)
        probs = scores.probs
        n_ok, fails = len(loaded.keys), loaded.failures
        images = np.concatenate([loaded.images, np.zeros((len(fails), 28, 28), dtype=np.uint8)])
        all_probs = np.concatenate([probs, np.zeros((len(fails), probs.shape[1]), dtype=np.float32)])
        unfamiliarity = np.concatenate([scores.unfamiliarity, np.full(len(fails), np.nan, dtype=np.float32)])
        return {
            "key": np.array(loaded.keys + [f.key for f in fails], dtype=object),
            "sha256": np.array(loaded.shas + [f.sha256 for f in fails], dtype=object),
            "size": np.array(loaded.sizes + [f.size for f in fails], dtype=np.int64),
            "ok": np.array([True] * n_ok + [False] * len(fails)),
            "error_code": np.array([""] * n_ok + [f.code for f in fails], dtype=object),
            "error": np.array([""] * n_ok + [f.message for f in fails], dtype=object),
            "image": images,
            "probs": all_probs,
            "unfamiliarity": unfamiliarity,  # NaN: the version has no score
            "loader_rss_mb": np.full(n_ok + len(fails), peak_rss_mb()),  # this actor's peak so far
            "runtime": np.array([self.predictor.runtime_name] * len(images), dtype=object),
        }


def _to_loaded(rows: dict[str, np.ndarray], infos: dict[str, ObjectInfo]) -> tuple[LoadedBatch, Scores]:
    ok = np.asarray(rows["ok"], dtype=bool)
    keys = [str(k) for k in rows["key"]]
    out = LoadedBatch(
        keys=[k for k, good in zip(keys, ok, strict=True) if good],
        shas=[str(s) for s, good in zip(rows["sha256"], ok, strict=True) if good],
        sizes=[int(s) for s, good in zip(rows["size"], ok, strict=True) if good],
        images=np.asarray(rows["image"], dtype=np.uint8)[ok].reshape(-1, 28, 28),
        failures=[
            Failure(k, str(s), int(z), str(c), str(e))
            for k, s, z, c, e, good in zip(
                keys, rows["sha256"], rows["size"], rows["error_code"], rows["error"], ok, strict=True
            )
            if not good
        ],
        infos={k: infos[k] for k in keys if k in infos},
        loader_rss_mb=float(np.max(rows["loader_rss_mb"], initial=0.0)),
    )
    probs = np.asarray(rows["probs"], dtype=np.float32)[ok].reshape(-1, 10)
    return out, Scores(probs, np.asarray(rows["unfamiliarity"], dtype=np.float32)[ok].reshape(-1))


@dataclass(frozen=True)
class PinnedModel:
    """The version every actor loads: a pinned ``models:/name/version`` URI (so every actor loads the same version,
    whatever the alias points at meanwhile), the registry it is in, and each actor's ``--runtime`` (auto times the
    runtimes on the actor's own CPU)."""

    uri: str
    tracking_uri: str
    runtime: str = "auto"


class RayEngine:
    """Actors prepare and score; the driver answers column-wise with the version's ``thresholds``. ``ray_address``:
    a cluster (BatchSettings.ray_address, RAY_ADDRESS), or None: a local Ray of ``num_cpus`` CPUs."""

    def __init__(
        self,
        *,
        store: StoreAddress,
        model: PinnedModel,
        thresholds: Thresholds,
        num_cpus: int = 2,
        actors: int | None = None,
        ray_address: str | None = None,
        max_object_bytes: int = MAX_OBJECT_BYTES,
    ) -> None:
        self.address = ray_address
        self.max_object_bytes = max_object_bytes
        self.store = store
        self.model = model
        self.thresholds = thresholds
        self.num_cpus = num_cpus
        self.actors = actors or max(1, num_cpus)
        self.runtime = "not started"  # what the actors report with their first batch

    def score(self, todo: Sequence[ObjectInfo], batch_size: int) -> Iterator[tuple[LoadedBatch, ColumnAnswer]]:
        if not todo:
            return
        ray = _import_ray()
        address = self.address
        started = not ray.is_initialized()
        if started:
            # The actors get the job's settings through the runtime env, never its secrets (see worker_env).
            kwargs = {"address": address, "runtime_env": {"env_vars": worker_env(os.environ)}, "log_to_driver": False}
            if address is None:
                kwargs.update(num_cpus=self.num_cpus, include_dashboard=False)
            ray.init(**kwargs)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True  # outputs in input order, like the local engine
            ctx.enable_progress_bars = False
            infos = {i.key: i for i in todo}
            ds = ray.data.from_items(
                [{"key": i.key, "size": i.size, "md5": i.md5 or "", "kind": i.kind} for i in todo],
                override_num_blocks=max(1, -(-len(todo) // batch_size)),
            )
            scored = ds.map_batches(
                _Scorer,
                fn_constructor_kwargs={
                    "storage_uri": self.store.uri,
                    "endpoint_url": self.store.endpoint_url,
                    "model": {"uri": self.model.uri, "runtime": self.model.runtime, "batch": batch_size},
                    "tracking_uri": strip_userinfo(self.model.tracking_uri),  # the cluster stores task arguments too
                    "max_bytes": self.max_object_bytes,
                },
                batch_size=batch_size,
                batch_format="numpy",
                concurrency=self.actors,
                num_cpus=1,
            )
            for rows in scored.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
                if len(rows["runtime"]):
                    self.runtime = str(rows["runtime"][0])
                batch, scores = _to_loaded(rows, infos)
                yield batch, ColumnAnswer.of(scores, self.thresholds)
        finally:
            if started:
                ray.shutdown()
