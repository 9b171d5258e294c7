"""Read and preprocess one batch of stored images (shared by every engine; runs in worker processes).

Each input becomes either a 28x28 model image (through THE preprocessing function,
:func:`data_processing.preprocessing.preprocess_bytes`) or a :class:`~batch_prediction.outputs.Failure`
with the reason: an :class:`~data_processing.preprocessing.ImageError` code, or ``read_error`` when the
object vanished or could not be fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psutil

from batch_prediction.outputs import Failure
from common.storage import LocalStorage, ObjectInfo, Storage, open_storage, sha256_hex
from data_processing.preprocessing import ImageError, preprocess_bytes


@dataclass
class LoadedBatch:
    """The scoreable part of a batch (in input order) and its failures."""

    keys: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), dtype=np.uint8))
    failures: list[Failure] = field(default_factory=list)
    infos: dict[str, ObjectInfo] = field(default_factory=dict)
    loader_rss_mb: float = 0.0  # resident memory of the process that loaded it (worker processes)

    def __len__(self) -> int:
        return len(self.keys) + len(self.failures)


def _read(storage: Storage, key: str) -> bytes | Exception:
    try:
        return storage.get_bytes(key)
    except Exception as exc:
        return exc


def load_batch(storage: Storage, infos: Sequence[ObjectInfo], *, io_threads: int = 16) -> LoadedBatch:
    """Fetch, hash and preprocess ``infos``. A local store is read in line; remote stores with a thread pool."""
    keys = [i.key for i in infos]
    if isinstance(storage, LocalStorage) or io_threads <= 1:
        blobs = [_read(storage, k) for k in keys]
    else:
        with ThreadPoolExecutor(min(io_threads, max(len(keys), 1))) as pool:
            blobs = list(pool.map(lambda k: _read(storage, k), keys))
    out = LoadedBatch(infos={i.key: i for i in infos})
    images: list[np.ndarray] = []
    for info, blob in zip(infos, blobs, strict=True):
        if isinstance(blob, Exception):
            out.failures.append(Failure(info.key, "", info.size, "read_error", f"{type(blob).__name__}: {blob}"))
            continue
        sha = sha256_hex(blob)
        try:
            images.append(preprocess_bytes(blob))
        except ImageError as exc:
            out.failures.append(Failure(info.key, sha, len(blob), exc.code, str(exc)))
            continue
        except Exception as exc:
            out.failures.append(Failure(info.key, sha, len(blob), "invalid_image", f"{type(exc).__name__}: {exc}"))
            continue
        out.keys.append(info.key)
        out.shas.append(sha)
        out.sizes.append(len(blob))
    if images:
        out.images = np.stack(images)
    return out


# --- worker-process side (spawned processes keep their own store client) ---
_WORKER_STORAGE: Storage | None = None


def init_worker(storage_uri: str, endpoint_url: str | None) -> None:
    global _WORKER_STORAGE
    _WORKER_STORAGE = open_storage(storage_uri, endpoint_url=endpoint_url)


def load_batch_in_worker(infos: Sequence[ObjectInfo], io_threads: int = 16) -> LoadedBatch:
    if _WORKER_STORAGE is None:
        raise RuntimeError("init_worker() was not called in this process")
    batch = load_batch(_WORKER_STORAGE, infos, io_threads=io_threads)
    # Current RSS, sampled per batch: ru_maxrss would include the parent's pages between fork and exec.
    batch.loader_rss_mb = psutil.Process().memory_info().rss / 2**20
    return batch
