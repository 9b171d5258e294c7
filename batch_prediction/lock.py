"""One nightly job per store: the lock follows the store, not the working folder.

The lock was ``<DATA_DIR>/batch_predict.lock``, and ``DATA_DIR`` is relative by default: two jobs on the same store
started from two folders both ran (22,048 rows for 20,000 inputs, 2,048 keys scored twice). Now:

* a local store is locked by a file in the store itself, ``<store>/.batch_predict.lock``: every job that writes
  this store sees it, from whatever folder (and whatever path it names the store by);
* an S3 store is locked by a file keyed by the store's URI and endpoint, in ``<temp dir>/ric-batch-locks/``: every
  job on this machine that writes the bucket sees it. Jobs on other machines do not: schedule the job on one host.

Both are OS file locks (``filelock``): released by the kernel when the holder dies, so a SIGKILLed night never leaves
a stale lock behind. Pure wiring, no heavy imports: a second launch must exit 75 at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from common.storage import LocalStorage

LOCK_NAME = ".batch_predict.lock"


def lock_path(storage_uri: str, endpoint_url: str | None = None) -> Path:
    """The lock file of the store ``storage_uri`` names (see the module docstring)."""
    if storage_uri.startswith("s3://"):
        identity = f"{storage_uri.rstrip('/')} {endpoint_url or ''}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
        folder = Path(tempfile.gettempdir()) / "ric-batch-locks"
        folder.mkdir(mode=0o1777, exist_ok=True)
        return folder / f"{digest}.lock"
    return LocalStorage(storage_uri.removeprefix("file://")).root / LOCK_NAME


def store_lock(storage_uri: str, endpoint_url: str | None = None) -> FileLock:
    """A non-blocking lock on the store (``acquire()`` raises ``filelock.Timeout`` when another job holds it)."""
    path = lock_path(storage_uri, endpoint_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=0, mode=0o666)  # another user's job on the same store can take it too


class Locked(RuntimeError):
    """Another job holds ``lock_file``."""

    def __init__(self, lock_file: str) -> None:
        super().__init__(f"another batch run holds {lock_file}")
        self.lock_file = lock_file


@contextlib.contextmanager
def night_locks(storage_uri: str, endpoint_url: str | None = None, extra: str | None = None) -> Iterator[list[str]]:
    """Hold the store's lock and, with ``extra``, that lock file too, for the block; yields the lock files held.
    Raises :class:`Locked` at once, holding nothing, when another job holds one of them."""
    locks = [store_lock(storage_uri, endpoint_url)]
    if extra:
        Path(extra).parent.mkdir(parents=True, exist_ok=True)
        locks.append(FileLock(str(extra), timeout=0))
    with contextlib.ExitStack() as held:
        for lock in locks:
            try:
                lock.acquire()
            except Timeout:
                raise Locked(lock.lock_file) from None
            held.callback(lock.release)
        yield [lock.lock_file for lock in locks]
