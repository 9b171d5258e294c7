"""The serving drift window: the per-item features of the most recent ``capacity`` items.

Bounded, thread-safe, and optionally shared by several worker processes through a directory:

* ``add`` only appends the batch to an in-memory list under a lock (about a microsecond; no I/O on the
  request path).
* With ``directory``, a daemon thread of each process appends the buffered items every ``flush_interval``
  seconds (or as soon as ``flush_rows`` are waiting) to that process's own segment files
  ``<directory>/w-<writer>-<seq>.seg``. One writer per file, so processes never need a cross-process lock.
  A writer rotates to a new segment after ``capacity`` items and deletes its segment before the previous one,
  so each process keeps between ``capacity`` and ``2 * capacity`` items on disk: bounded, yet its most recent
  ``capacity`` items are always there.
* ``snapshot`` merges every segment in the directory (plus this process's not-yet-flushed items), orders by
  the time each batch was added, and returns the most recent ``capacity`` items. Segments of workers that
  exited are still read (their items are real traffic) until they fall out of the window and are older than
  ``stale_seconds``; then they are deleted.
* ``clear`` deletes the segments and records the time, so items added earlier but flushed later by another
  process are ignored too.

Segment format: a sequence of self-describing chunks ``<u32 header length><JSON header><float64 rows>``, the
header holding ``keys`` and ``rows``; each row is ``[time_ns, feature values...]``. A torn trailing chunk
(crash mid-write, or a concurrent read) is ignored.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from pathlib import Path

import numpy as np

INT_FEATURES = frozenset({"predicted_class"})
_HEADER = struct.Struct("<I")
_CLEARED = "cleared"
_LIVE: weakref.WeakSet[FeatureWindow] = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    for w in list(_LIVE):
        with contextlib.suppress(Exception):  # exiting anyway; never mask the real exit status
            w.flush()


atexit.register(_flush_all_at_exit)


class FeatureWindow:
    """Most recent ``capacity`` items' features; shared across processes when ``directory`` is given."""

    def __init__(
        self,
        capacity: int,
        directory: str | Path | None = None,
        *,
        flush_interval: float = 0.5,
        flush_rows: int = 256,
        stale_seconds: float = 3600.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.directory = Path(directory) if directory is not None else None
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.stale_seconds = stale_seconds
        self._lock = threading.Lock()  # guards the in-memory buffer; held for O(1) work only
        self._io_lock = threading.Lock()  # orders flushes against snapshots (no double counting)
        self._pending: deque[tuple[int, dict[str, np.ndarray]]] = deque()
        self._pending_rows = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._writer = uuid.uuid4().hex[:12]
        self._seq = 0
        self._seg_rows = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            _LIVE.add(self)

    # --- request path ---------------------------------------------------------------------------------------

    def add(self, features: dict[str, np.ndarray]) -> None:
        """Append a batch of per-item features (equal-length 1-D arrays, as from ``item_features``)."""
        if not features:
            return
        n = len(next(iter(features.values())))
        if n == 0:
            return
        stamp = time.time_ns()
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            self._pending.append((stamp, features))
            self._pending_rows += n
            # Safe in both modes: items older than this process's newest `capacity` can never be in the window.
            self._trim_memory()
            if self.directory is None:
                return
            if self._thread is None:
                self._start_flusher()
            elif self._pending_rows >= self.flush_rows:
                self._wake.set()

    def _trim_memory(self) -> None:
        # Drop whole old batches while the rest still holds >= capacity items.
        while self._pending and self._pending_rows - len(next(iter(self._pending[0][1].values()))) >= self.capacity:
            _, old = self._pending.popleft()
            self._pending_rows -= len(next(iter(old.values())))

    def _after_fork(self) -> None:
        # A forked child inherits the parent's buffer (the parent flushes it) and a dead flusher thread.
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._pending = deque()
        self._pending_rows = 0
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()
        self._writer = uuid.uuid4().hex[:12]
        self._seq = 0
        self._seg_rows = 0
        if self.directory is not None:
            _LIVE.add(self)

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        wake = self._wake

        def loop() -> None:
            while True:
                wake.wait(self.flush_interval)
                wake.clear()
                window = ref()
                if window is None:
                    return
                with contextlib.suppress(OSError):  # disk trouble: keep serving; items stay buffered, retried
                    window.flush()
                del window

        self._thread = threading.Thread(target=loop, name="feature-window-flush", daemon=True)
        self._thread.start()

    # --- persistence ----------------------------------------------------------------------------------------

    def _take_pending(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        with self._lock:
            batches = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
        return batches

    def flush(self) -> None:
        """Write buffered items to this process's segment (no-op without a directory)."""
        if self.directory is None:
            return
        with self._io_lock:
            batches = self._take_pending()
            if not batches:
                return
            try:
                for keys, rows in _batches_to_rows(batches):
                    self._append(keys, rows)
            except OSError:
                with self._lock:  # put them back, oldest first, so nothing is lost
                    self._pending.extendleft(reversed(batches))
                    self._pending_rows += sum(len(next(iter(f.values()))) for _, f in batches)
                raise

    def _segment(self, seq: int) -> Path:
        assert self.directory is not None
        return self.directory / f"w-{self._writer}-{seq:08d}.seg"

    def _append(self, keys: list[str], rows: np.ndarray) -> None:
        start = 0
        while start < rows.shape[0]:
            room = self.capacity - self._seg_rows
            if room <= 0:
                self._seq += 1
                self._seg_rows = 0
                old = self._segment(self._seq - 2)
                old.unlink(missing_ok=True)
                continue
            part = rows[start : start + room]
            header = json.dumps({"keys": keys, "rows": int(part.shape[0])}).encode()
            blob = _HEADER.pack(len(header)) + header + np.ascontiguousarray(part, dtype="<f8").tobytes()
            fd = os.open(self._segment(self._seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, blob)
            finally:
                os.close(fd)
            self._seg_rows += part.shape[0]
            start += part.shape[0]

    # --- reading --------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, np.ndarray]:
        """The most recent ``capacity`` items (all processes sharing the directory), oldest first."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._io_lock:
            with self._lock:
                batches = list(self._pending)
            chunks = _batches_to_rows(batches)
            if self.directory is not None:
                chunks = self._read_directory() + chunks
        return self._merge(chunks)

    def _cleared_at(self) -> int:
        assert self.directory is not None
        try:
            return int((self.directory / _CLEARED).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _read_directory(self) -> list[tuple[list[str], np.ndarray]]:
        assert self.directory is not None
        cleared = self._cleared_at()
        per_file: list[tuple[Path, list[tuple[list[str], np.ndarray]]]] = []
        for path in sorted(self.directory.glob("w-*.seg")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # rotated away by its writer meanwhile
                continue
            chunks = [(k, r[r[:, 0] >= cleared]) for k, r in _parse_segment(data)]
            per_file.append((path, [(k, r) for k, r in chunks if r.shape[0]]))
        self._drop_stale(per_file)
        return [c for _, chunks in per_file for c in chunks]

    def _drop_stale(self, per_file: list[tuple[Path, list[tuple[list[str], np.ndarray]]]]) -> None:
        """Delete segments (of exited workers) whose items are all outside the window and old."""
        stamps = [r[:, 0] for _, chunks in per_file for _, r in chunks]
        if not stamps:
            return
        all_stamps = np.concatenate(stamps)
        if all_stamps.size <= self.capacity:
            return
        cutoff = np.partition(all_stamps, all_stamps.size - self.capacity)[all_stamps.size - self.capacity]
        too_old = time.time_ns() - int(self.stale_seconds * 1e9)
        own = f"w-{self._writer}-"
        for path, chunks in per_file:
            newest = max((float(r[:, 0].max()) for _, r in chunks), default=0.0)
            if not path.name.startswith(own) and newest < cutoff and newest < too_old:
                path.unlink(missing_ok=True)

    def _merge(self, chunks: list[tuple[list[str], np.ndarray]]) -> dict[str, np.ndarray]:
        if not chunks:
            return {}
        keys = sorted(set.intersection(*(set(k) for k, _ in chunks)))
        stamps = np.concatenate([r[:, 0] for _, r in chunks])
        cols = {key: np.concatenate([r[:, 1 + k.index(key)] for k, r in chunks]) for key in keys}
        order = np.argsort(stamps, kind="stable")[-self.capacity :]
        return {key: (col[order].astype(np.int64) if key in INT_FEATURES else col[order]) for key, col in cols.items()}

    def __len__(self) -> int:
        snap = self.snapshot()
        return len(next(iter(snap.values()))) if snap else 0

    def clear(self) -> None:
        """Forget every item (e.g. when a new model version, with a new reference, starts serving)."""
        with self._io_lock:
            self._take_pending()
            if self.directory is not None:
                marker = self.directory / f".{_CLEARED}.{self._writer}.tmp"
                marker.write_text(str(time.time_ns()))
                os.replace(marker, self.directory / _CLEARED)
                for path in self.directory.glob("w-*.seg"):
                    path.unlink(missing_ok=True)
                self._seq += 1
                self._seg_rows = 0


def _batches_to_rows(batches: list[tuple[int, dict[str, np.ndarray]]]) -> list[tuple[list[str], np.ndarray]]:
    """In-memory batches -> (keys, rows[time_ns, values...]) chunks, one per run of batches with the same keys.
    Concatenates per key over the whole run (one numpy call per key, not per item: this runs in the flusher
    thread and competes with requests for the GIL)."""
    out: list[tuple[list[str], np.ndarray]] = []
    i = 0
    while i < len(batches):
        keys = sorted(batches[i][1])
        j = i
        while j < len(batches) and sorted(batches[j][1]) == keys:
            j += 1
        run = batches[i:j]
        sizes = [len(f[keys[0]]) for _, f in run]
        rows = np.empty((sum(sizes), len(keys) + 1), dtype=np.float64)
        rows[:, 0] = np.repeat(np.array([stamp for stamp, _ in run], dtype=np.float64), sizes)
        for c, k in enumerate(keys):
            rows[:, c + 1] = np.concatenate([f[k] for _, f in run], axis=None)
        out.append((keys, rows))
        i = j
    return out


def _parse_segment(data: bytes) -> list[tuple[list[str], np.ndarray]]:
    chunks: list[tuple[list[str], np.ndarray]] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        (hlen,) = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        try:
            header = json.loads(data[start : start + hlen])
            keys, n = list(header["keys"]), int(header["rows"])
        except (ValueError, KeyError, TypeError):
            break  # torn or corrupt: stop at the last good chunk
        body = start + hlen
        end = body + n * (len(keys) + 1) * 8
        if end > len(data):
            break
        rows = np.frombuffer(data[body:end], dtype="<f8").reshape(n, len(keys) + 1)
        chunks.append((keys, rows))
        pos = end
    return chunks
