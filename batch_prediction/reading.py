"""Read and prepare one batch of stored images (shared by every engine; runs in worker processes).

Each input becomes either a 28x28 model image (the classifier's prepare step,
:func:`inference.classifier.prepare_item`: THE preprocessing function under the night's decoding budget) or a
:class:`~batch_prediction.outputs.Failure` with the reason: an :class:`~data_processing.preprocessing.ImageError`
code, or ``read_error`` when the object vanished or could not be fetched.

Decoding is bounded as in the API: an input whose container announces too much decoding work is quarantined
(``decode_work_exceeded``) before it is decoded, and one still decoding after
:data:`inference.classifier.ITEM_DECODE_SECONDS` is stopped (``decode_time_exceeded``; it runs in a child process
that is killed, :mod:`data_processing.sandbox`).

The night's input is untrusted: :func:`screen` turns what must not be read (a name that is not UTF-8 or holds a
control character, a hidden or temporary file, a FIFO, socket, device, broken or directory link, a folder deeper
than the listing walks or one it could not list, an object over the byte cap by its listed size) into a failure
before anything is opened, and reads are capped too (an object may grow after the listing). Objects are read and
preprocessed one at a time, with at most ``max_inflight_bytes`` of listed size being fetched ahead, so a batch's
memory does not grow with batch size x object size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from batch_prediction.outputs import Failure
from common.resources import die_with_parent, peak_rss_mb
from common.storage import (
    KIND_BROKEN_LINK,
    KIND_DEEP_FOLDER,
    KIND_FILE,
    KIND_INVALID_NAME,
    KIND_TEMPORARY,
    KIND_UNREADABLE,
    KIND_UNREADABLE_FOLDER,
    MAX_KEY_DEPTH,
    TMP_PREFIX,
    LocalStorage,
    NotARegularObject,
    ObjectInfo,
    ObjectTooLarge,
    Storage,
    open_storage,
    sha256_hex,
)
from data_processing.sandbox import shared_sandbox
from inference.classifier import Refusal, prepare_item

# The largest input read by default: the API's upload limit (a photo it would refuse is refused here too);
# BatchSettings.max_object_bytes (BATCH_MAX_OBJECT_BYTES) sets it.
MAX_OBJECT_BYTES = 20 * 1024 * 1024
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024  # listed bytes being fetched ahead by the I/O threads of one loader


# What the listing says of entries that are not read, as (error code, reason): never silently skipped.
_UNREAD = {
    KIND_INVALID_NAME: (
        "invalid_key",
        "the file name is not valid UTF-8 or holds a control character such as a newline (listed escaped)",
    ),
    KIND_DEEP_FOLDER: ("folder_too_deep", f"a folder {MAX_KEY_DEPTH} levels deep: what it holds is not listed"),
    KIND_UNREADABLE_FOLDER: ("unreadable_folder", "a folder that could not be listed (permissions, path length)"),
    KIND_UNREADABLE: ("unreadable", "an entry that could not be examined (permissions, path length)"),
    KIND_TEMPORARY: ("temporary_file", f"an unfinished write's temporary file ({TMP_PREFIX}...): never read"),
}


def screen(info: ObjectInfo, max_bytes: int) -> Failure | None:
    """The failure of an input that must not be read, decided from its listing alone; None if it may be read."""
    name = info.key.rsplit("/", 1)[-1]
    kind = KIND_TEMPORARY if name.startswith(TMP_PREFIX) and info.kind == KIND_FILE else info.kind
    if kind in _UNREAD:
        code, reason = _UNREAD[kind]
        return Failure(info.key, "", info.size, code, reason)
    if name.startswith("."):
        return Failure(info.key, "", info.size, "hidden_file", "a hidden file (its name starts with '.'): not read")
    if info.kind == KIND_BROKEN_LINK:
        return Failure(info.key, "", 0, "broken_link", "a symbolic link whose target does not exist")
    if info.kind != KIND_FILE:
        what = info.kind.replace("_", " ")
        return Failure(info.key, "", 0, "not_a_regular_file", f"a {what}, not a regular file: never opened")
    if info.size > max_bytes:
        return Failure(
            info.key, "", info.size, "object_too_large", f"{info.size:,} bytes is over the cap of {max_bytes:,}"
        )
    return None


@dataclass
class LoadedBatch:
    """The scoreable part of a batch (in input order) and its failures."""

    keys: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), dtype=np.uint8))
    failures: list[Failure] = field(default_factory=list)
    infos: dict[str, ObjectInfo] = field(default_factory=dict)
    loader_rss_mb: float = 0.0  # peak resident memory so far of the process that loaded it (worker processes)

    def __len__(self) -> int:
        return len(self.keys) + len(self.failures)


def _read(storage: Storage, key: str, max_bytes: int) -> bytes | Exception:
    try:
        return storage.get_bytes(key, max_bytes=max_bytes)
    except Exception as exc:
        return exc


def _fetch(
    storage: Storage, infos: Sequence[ObjectInfo], max_bytes: int, io_threads: int, max_inflight_bytes: int
) -> Iterator[bytes | Exception]:
    """Each input's bytes (or the exception reading it), in order. A local store is read in line; a remote one
    by ``io_threads`` threads, keeping at most ``max_inflight_bytes`` of listed size (and always one) ahead."""
    if isinstance(storage, LocalStorage) or io_threads <= 1:
        for info in infos:
            yield _read(storage, info.key, max_bytes)
        return
    with ThreadPoolExecutor(min(io_threads, max(len(infos), 1))) as pool:
        pending: deque[tuple[int, Future[bytes | Exception]]] = deque()
        inflight, nxt = 0, 0
        while nxt < len(infos) or pending:
            while nxt < len(infos) and len(pending) < io_threads and (not pending or inflight < max_inflight_bytes):
                size = max(infos[nxt].size, 0)
                pending.append((size, pool.submit(_read, storage, infos[nxt].key, max_bytes)))
                inflight += size
                nxt += 1
            size, fut = pending.popleft()
            inflight -= size
            yield fut.result()


def _read_failure(info: ObjectInfo, exc: Exception) -> Failure:
    if isinstance(exc, ObjectTooLarge):
        return Failure(info.key, "", info.size, "object_too_large", str(exc))
    if isinstance(exc, NotARegularObject):
        return Failure(info.key, "", info.size, "not_a_regular_file", "not a regular file: never read")
    return Failure(info.key, "", info.size, "read_error", f"{type(exc).__name__}: {exc}")


def load_batch(
    storage: Storage,
    infos: Sequence[ObjectInfo],
    *,
    io_threads: int = 16,
    max_bytes: int = MAX_OBJECT_BYTES,
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
) -> LoadedBatch:
    """Screen, fetch, hash and preprocess ``infos``, one object at a time (see the module docstring); an object
    listed over ``max_bytes`` is quarantined unread."""
    cap = max_bytes
    out = LoadedBatch(infos={i.key: i for i in infos})
    readable: list[ObjectInfo] = []
    for info in infos:
        refused = screen(info, cap)
        if refused is None:
            readable.append(info)
        else:
            out.failures.append(refused)
    images: list[np.ndarray] = []
    for info, blob in zip(readable, _fetch(storage, readable, cap, io_threads, max_inflight_bytes), strict=True):
        if isinstance(blob, Exception):
            out.failures.append(_read_failure(info, blob))
            continue
        sha = sha256_hex(blob)
        image = prepare_item(blob)  # the classifier's prepare step: decode + THE preprocessing, in this worker
        if isinstance(image, Refusal):
            out.failures.append(Failure(info.key, sha, len(blob), image.code, image.reason))
            continue
        images.append(image)
        out.keys.append(info.key)
        out.shas.append(sha)
        out.sizes.append(len(blob))
    if images:
        out.images = np.stack(images)
    return out


# --- worker-process side (spawned processes keep their own store client) ---
_WORKER_STORAGE: Storage | None = None


@dataclass(frozen=True)
class StoreAddress:
    """Where a worker process (or a Ray actor) opens the store: its URI and, for an S3-compatible service, the
    endpoint URL (a client is not sent to another process: each opens its own)."""

    uri: str
    endpoint_url: str | None = None

    def open(self) -> Storage:
        return open_storage(self.uri, endpoint_url=self.endpoint_url)


def init_worker(address: StoreAddress, parent_pid: int | None = None) -> None:
    global _WORKER_STORAGE
    die_with_parent(parent_pid)  # a SIGKILLed job must not leave its loaders behind (re-parented to PID 1)
    _WORKER_STORAGE = address.open()


def load_batch_in_worker(
    infos: Sequence[ObjectInfo], io_threads: int = 16, max_bytes: int = MAX_OBJECT_BYTES
) -> LoadedBatch:
    if _WORKER_STORAGE is None:
        raise RuntimeError("init_worker() was not called in this process")
    batch = load_batch(_WORKER_STORAGE, infos, io_threads=io_threads, max_bytes=max_bytes)
    # The process's own peak so far (not its RSS after the batch), or its decoder child's: large photos decode there.
    batch.loader_rss_mb = max(peak_rss_mb(), shared_sandbox().peak_rss_mb())
    return batch
