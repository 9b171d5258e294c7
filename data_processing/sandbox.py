"""THE preprocessing of one image in a child process that can be stopped: a decode past its time budget is killed.

A decoder is C code: once Pillow hands it the bytes, nothing in the calling process can interrupt it, so a time
budget checked between decoding steps lets one image hold a worker for as long as the decoder runs. The images
whose decoding is not trivially small (:data:`data_processing.preprocessing.INLINE_WORK`) go to a
:class:`DecodeSandbox` instead: a long-lived child process (``python -m data_processing.sandbox_child``) that runs
:func:`~data_processing.preprocessing.preprocess_bytes` on one image at a time and answers the 28x28 result. The
caller waits at most the budget's remaining seconds; then the child is killed (SIGKILL), the request is answered
``decode_time_exceeded``, and a fresh child is started for the next image. A decoder that crashes takes only the
child down (the image is refused as corrupt). The child dies with its parent.

Wire format (pipes): request ``>QQQ`` (payload bytes, declared-pixel cap, per-image decoded-pixel cap) then the
payload; answer ``>BI`` (0: ok, 1: refused; body length) then the 28x28 uint8 bytes or a JSON error
``{"error": class name, "message", "detail"}``. The child writes one ``R`` when it is ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import selectors
import struct
import subprocess
import sys
import threading
import time

import numpy as np

from data_processing import image_errors
from data_processing.image_errors import DecodeTimeExceeded, ImageError, InvalidImage

_REQUEST = struct.Struct(">QQQ")
_ANSWER = struct.Struct(">BI")
_READY = b"R"
START_SECONDS = 60.0  # a child's imports (numpy, Pillow) take ~0.3 s; a loaded machine may take much longer
_CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # glibc's own variables: keep a decode's buffers (up to 32 MiB each, 64 MiB free in all) for the next image.
    # With the defaults a fresh child mapped and faulted in every buffer again: +10 ms of system time per 12 MP photo.
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
}


class _Overrun(Exception):
    """The deadline passed before the child answered."""


class _ChildGone(Exception):
    """The child closed its pipe or died."""


class DecodeSandbox:
    """One child process decoding one image at a time (thread-safe: callers take turns)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._owner = os.getpid()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The current child's pid (None before the first start or after a kill)."""
        return self._proc.pid if self._proc is not None else None

    def peak_rss_mb(self) -> float:
        """The current child's peak resident memory in MiB (0 when there is none)."""
        from common.resources import peak_rss_mb

        pid = self.pid
        return peak_rss_mb(pid) if pid is not None else 0.0

    def start(self) -> None:
        """Start the child now (it imports in the background), so the first image does not wait for it."""
        with self._lock:
            self._alive()

    def preprocess(self, data: bytes, *, max_pixels: int, max_image_pixels: int, timeout: float) -> np.ndarray:
        """``preprocess_bytes(data)`` in the child; :class:`~data_processing.preprocessing.DecodeTimeExceeded`
        when it has not answered within ``timeout`` seconds (the child is then killed)."""
        with self._lock:
            deadline = time.monotonic() + max(timeout, 0.0)
            try:
                proc = self._deliver(_REQUEST.pack(len(data), max_pixels, max_image_pixels) + data, deadline)
                status, body = self._answer(proc, deadline)
            except _Overrun:
                self._kill()
                raise DecodeTimeExceeded(
                    f"decoding this request took longer than its budget of {timeout:.3g} s (stopped)"
                ) from None
            except _ChildGone:
                self._kill()
                raise InvalidImage("the image could not be decoded", detail="the decoder process died") from None
        if status == 0:
            side = math.isqrt(len(body))  # the child answers one square model image
            return np.frombuffer(body, dtype=np.uint8).reshape(side, side).copy()
        raise _error_from(json.loads(body))

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _deliver(self, request: bytes, deadline: float) -> subprocess.Popen[bytes]:
        """Send ``request`` to a ready child; a child that is gone before it has the whole request (it died while
        idle: not this image's doing) is replaced once."""
        for attempt in (1, 2):
            proc = self._alive()
            try:
                self._await_ready(proc)
                self._send(proc, request, deadline)
                return proc
            except _ChildGone:
                self._kill()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # ---- the child ------------------------------------------------------------------------------------------
    def _alive(self) -> subprocess.Popen[bytes]:
        if self._owner != os.getpid():  # a forked copy of this object: the child belongs to the parent process
            self._proc, self._ready, self._owner = None, False, os.getpid()
        if self._proc is not None and self._proc.poll() is not None:
            self._proc, self._ready = None, False  # died while idle: not this image's fault
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "data_processing.sandbox_child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **_CHILD_ENV},
                close_fds=True,
            )
            for pipe in (self._proc.stdin, self._proc.stdout):
                assert pipe is not None
                os.set_blocking(pipe.fileno(), False)
                with contextlib.suppress(OSError, AttributeError):  # Linux: a 1 MiB pipe, not 16 round trips of 64 KiB
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        return self._proc

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        if not self._ready:
            try:
                self._read(proc, 1, time.monotonic() + START_SECONDS)
            except _Overrun as exc:
                raise _ChildGone("the decoder process did not start") from exc
            self._ready = True

    def _kill(self) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]

    # ---- the pipes (non-blocking, every wait bounded by the deadline) ----------------------------------------
    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Overrun
        with selectors.DefaultSelector() as sel:
            sel.register(fd, event)
            if not sel.select(left):
                raise _Overrun

    def _send(self, proc: subprocess.Popen[bytes], data: bytes, deadline: float) -> None:
        fd = proc.stdin.fileno()  # type: ignore[union-attr]
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                self._wait(fd, selectors.EVENT_WRITE, deadline)
            except OSError as exc:  # EPIPE: the child is gone
                raise _ChildGone from exc

    def _read(self, proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        parts, got = [], 0
        while got < n:
            try:
                chunk = os.read(fd, n - got)
            except BlockingIOError:
                self._wait(fd, selectors.EVENT_READ, deadline)
                continue
            if not chunk:
                raise _ChildGone
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _answer(self, proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, bytes]:
        status, length = _ANSWER.unpack(self._read(proc, _ANSWER.size, deadline))
        return status, self._read(proc, length, deadline)


def _error_from(payload: dict[str, str]) -> ImageError:
    cls = getattr(image_errors, payload.get("error", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, ImageError)):
        cls = InvalidImage
    return cls(payload.get("message", "the image could not be decoded"), detail=payload.get("detail"))


_SHARED: DecodeSandbox | None = None
_SHARED_LOCK = threading.Lock()


def shared_sandbox() -> DecodeSandbox:
    """This process's sandbox (created on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = DecodeSandbox()
        return _SHARED
