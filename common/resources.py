"""What a process costs and how it is tied to its parent: the real peak RSS, and dying with the parent.

* :func:`peak_rss_mb` is the kernel's high-water mark of this process's own memory (``VmHWM``). ``ru_maxrss`` is
  not: a child created by fork/vfork + exec inherits the parent's high-water mark at exec, so a loader spawned by
  a 1 GB job reported ~1 GB; and sampling the current RSS after a batch misses the peak inside it (75.8 MB
  reported while the loader had peaked at 1 GB).
* :func:`die_with_parent` makes a helper process exit when the process that started it dies, even by SIGKILL
  (Linux: ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread), so loaders never outlive the job.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory of this process (or of ``pid``, Linux only), in MiB (Linux ``VmHWM``; elsewhere
    ``ru_maxrss``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    if pid is not None:
        return 0.0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def die_with_parent(parent_pid: int | None = None, *, poll_seconds: float = 1.0) -> None:
    """Exit when ``parent_pid`` (default: the current parent) dies. Call first thing in a helper process."""
    parent = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the signal was armed
                    os._exit(1)
                return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
