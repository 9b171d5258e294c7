"""Run per-file work (PNG encode/decode, small-file syscalls) on every core, in chunks.

The data stages handle tens of thousands of 28x28 images; per image the work is a few hundred microseconds of CPU
(zlib, PIL, file-system calls), so a thread pool is bound by the GIL and by one ``Future`` per item. Here the items
are cut into chunks and each chunk runs in a worker process; results come back in chunk order, so outputs stay
deterministic. Small jobs (below ``min_items``) and ``workers=1`` run in this process: a pool would cost more than
it saves. Only for local work: S3 transfers wait on the network and keep their thread pools.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MIN_ITEMS = 2000  # below this a process pool's start-up (fork + pickling) is not worth it
CHUNK = 1000


def chunks(seq: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    """``seq`` cut into consecutive slices of at most ``size`` items (pure)."""
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def process_count(workers: int) -> int:
    """Worker processes for ``workers`` requested: never more than the usable cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(workers, cores))


def _context() -> multiprocessing.context.BaseContext:
    # fork is instant and shares the parent's arrays copy-on-write, but is only safe from a single-threaded process
    # (a thread could hold a lock at fork time); anywhere else (a test session that imported TensorFlow, ...) spawn.
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def map_chunks(
    fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], *, workers: int, items: int, min_items: int = MIN_ITEMS
) -> Iterator[T]:
    """``fn(*job)`` for every job, in order; in ``process_count(workers)`` processes when ``items >= min_items``.

    ``fn`` must be a module-level function and the jobs picklable. Results are yielded as they complete in order,
    so a caller can report progress.
    """
    jobs = list(jobs)
    n = process_count(workers)
    if n == 1 or items < min_items or len(jobs) < 2:
        for job in jobs:
            yield fn(*job)
        return
    with ProcessPoolExecutor(max_workers=min(n, len(jobs)), mp_context=_context()) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()
