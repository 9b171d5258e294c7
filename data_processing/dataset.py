"""The processed dataset's compact format: one ``processed/<split>.npz`` object per split in the store.

Each holds ``images`` (N, 28, 28) uint8 (already through :mod:`data_processing.preprocessing`),
``labels`` (N,) int64 and ``keys`` (N,) str, the raw storage key each image came from.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from common.storage import Storage

SPLITS = ("train", "val", "test")
PROCESSED_PREFIX = "processed"


@dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def digest(self) -> str:
        """Content hash of pixels and labels: the dataset's identity in MLflow."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
        return h.hexdigest()[:16]


def split_key(split: str) -> str:
    return f"{PROCESSED_PREFIX}/{split}.npz"


def encode_split(split: Split) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=np.ascontiguousarray(split.images, dtype=np.uint8),
        labels=np.asarray(split.labels, dtype=np.int64),
        keys=np.asarray(split.keys, dtype=str),
    )
    return buf.getvalue()


def decode_split(data: bytes) -> Split:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return Split(images=npz["images"], labels=npz["labels"], keys=npz["keys"])


def save_split(storage: Storage, name: str, split: Split) -> None:
    storage.put_bytes(split_key(name), encode_split(split), content_type="application/octet-stream")


def load_split(storage: Storage, name: str) -> Split:
    """Load one processed split; raises ``common.storage.ObjectNotFound`` if processing has not run."""
    return decode_split(storage.get_bytes(split_key(name)))
