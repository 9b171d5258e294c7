"""The serving drift window: bounded, thread-safe, shared by real worker processes through a directory."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model_serving.window import FeatureWindow, _parse_segment


def batch(ids: np.ndarray | range) -> dict[str, np.ndarray]:
    """Per-item features whose ``item`` column identifies each item (so tests can see which ones survive)."""
    ids = np.asarray(ids, dtype=np.float64)
    return {
        "item": ids,
        "confidence": np.full(ids.size, 0.9),
        "predicted_class": (ids % 10).astype(np.int64),
    }


def items(snapshot: dict[str, np.ndarray]) -> list[int]:
    return [int(v) for v in snapshot.get("item", [])]


@pytest.mark.parametrize("shared", [False, True])
def test_window_keeps_the_most_recent_capacity_items(tmp_path: Path, shared: bool) -> None:
    w = FeatureWindow(250, tmp_path / "win" if shared else None)
    assert len(w) == 0 and w.snapshot() == {}
    for start in range(0, 1000, 100):
        w.add(batch(range(start, start + 100)))
    snap = w.snapshot()
    assert items(snap) == list(range(750, 1000))  # newest 250, oldest first
    assert len(w) == 250
    assert snap["predicted_class"].dtype == np.int64
    np.testing.assert_array_equal(snap["predicted_class"], np.arange(750, 1000) % 10)


def test_empty_batches_are_ignored(tmp_path: Path) -> None:
    w = FeatureWindow(10, tmp_path)
    w.add({})
    w.add(batch([]))
    assert len(w) == 0


def test_memory_stays_bounded_without_a_directory() -> None:
    w = FeatureWindow(100)
    for i in range(5000):
        w.add(batch([i]))
    assert w._pending_rows < 200  # whole batches dropped once the rest still fills the window
    assert items(w.snapshot()) == list(range(4900, 5000))


@pytest.mark.parametrize("shared", [False, True])
def test_threads_hammering_add_lose_and_duplicate_nothing(tmp_path: Path, shared: bool) -> None:
    n_threads, per_thread = 8, 400
    w = FeatureWindow(n_threads * per_thread, tmp_path / "win" if shared else None, flush_rows=64)
    start = threading.Barrier(n_threads + 1)
    snapshots: list[int] = []

    def worker(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            w.add(batch([t * per_thread + i]))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    start.wait()
    while any(th.is_alive() for th in threads):  # concurrent readers (and, if shared, the flusher thread)
        snapshots.append(len(w))
    for th in threads:
        th.join()
    got = items(w.snapshot())
    assert sorted(got) == list(range(n_threads * per_thread))  # every item exactly once
    assert all(s <= n_threads * per_thread for s in snapshots)
    # Each thread's own items stay in the order that thread added them.
    for t in range(n_threads):
        mine = [g for g in got if g // per_thread == t]
        assert mine == sorted(mine)


def test_flushed_segments_are_bounded_on_disk(tmp_path: Path) -> None:
    w = FeatureWindow(100, tmp_path)
    for start in range(0, 2000, 25):
        w.add(batch(range(start, start + 25)))
        w.flush()
    rows = sum(r.shape[0] for p in tmp_path.glob("w-*.seg") for _, r in _parse_segment(p.read_bytes()))
    assert 100 <= rows <= 200
    assert len(list(tmp_path.glob("w-*.seg"))) <= 2
    assert items(w.snapshot()) == list(range(1900, 2000))


def test_a_torn_trailing_chunk_is_ignored(tmp_path: Path) -> None:
    w = FeatureWindow(50, tmp_path)
    w.add(batch(range(20)))
    w.flush()
    seg = next(tmp_path.glob("w-*.seg"))
    with seg.open("ab") as f:
        f.write(b'\x40\x00\x00\x00{"keys": ["item"')  # a writer died mid-chunk
    assert items(FeatureWindow(50, tmp_path).snapshot()) == list(range(20))


def test_clear_forgets_everything_including_late_flushes_of_older_items(tmp_path: Path) -> None:
    a = FeatureWindow(100, tmp_path)
    b = FeatureWindow(100, tmp_path)  # another worker process, as far as the directory is concerned
    a.add(batch(range(10)))
    b.add(batch(range(100, 110)))  # added before the clear, flushed after it
    a.flush()
    a.clear()
    b.flush()
    assert len(a) == 0 and len(b) == 0
    a.add(batch([7]))
    assert items(a.snapshot()) == [7]  # its own unflushed items: visible at once
    a.flush()
    assert items(b.snapshot()) == [7]  # other workers see them once flushed


def _child_adds(directory: str, ids: list[int], flush_explicitly: bool, done: mp.synchronize.Event) -> None:
    w = FeatureWindow(400, directory, flush_interval=0.05)
    for i in ids:
        w.add(batch([i]))
    if flush_explicitly:
        w.flush()
    done.set()
    time.sleep(0 if flush_explicitly else 1.0)  # let the background flusher run before exiting


def test_two_worker_processes_share_one_window(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    first_done, second_done = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_child_adds, args=(str(tmp_path), list(range(0, 300)), True, first_done))
    first.start()
    first.join()
    assert first.exitcode == 0
    # The second worker relies on its background flusher (no explicit flush).
    second = ctx.Process(target=_child_adds, args=(str(tmp_path), list(range(1000, 1300)), False, second_done))
    second.start()
    second.join()
    assert second.exitcode == 0

    parent = FeatureWindow(400, tmp_path)
    got = items(parent.snapshot())
    assert len(got) == 400  # capacity respected across processes
    assert got == list(range(200, 300)) + list(range(1000, 1300))  # the most recent 400, in order of arrival


def test_snapshot_sees_a_live_workers_items_without_explicit_flush(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    child = ctx.Process(target=_child_adds, args=(str(tmp_path), list(range(50)), False, done))
    child.start()
    try:
        assert done.wait(120)
        parent = FeatureWindow(400, tmp_path)
        deadline = time.monotonic() + 60  # a hang guard, not a performance bound: the flusher runs every 50 ms
        while len(parent) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(items(parent.snapshot())) == list(range(50))
    finally:
        child.join()
    assert child.exitcode == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FeatureWindow(0)
