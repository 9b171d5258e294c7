"""Serve the Flask (WSGI) app over granian's RSGI interface, with the request body buffered before the app runs.

Why not plain WSGI: a WSGI app reads its body from a blocking stream, so a client that sends headers and then
stalls holds a worker thread until it gives up; a handful of such clients stop an API. Here granian (Rust) reads the
connection, this adapter ``await``s the complete body on the worker's event loop (a stalled client costs one
connection and one suspended coroutine, nothing else), and only then calls the Flask app, inline on the loop thread:
the app's work is CPU-bound (decode, preprocess, infer: about a millisecond), so a thread hop would only add cost.

Limits (:class:`BodyLimits`), each answered by the API's usual JSON error (the app is still called, with an empty
body and ``environ["ric.body_error"]`` set, so the metrics count it):

* size: a declared ``Content-Length`` above ``max_body`` is not read at all; a chunked body is read until it passes
  ``max_body`` (``body_too_large``, 413);
* memory: the bodies being buffered by one worker hold at most ``buffer_bytes`` in all and ``client_bytes`` per
  client address. A declared body is reserved whole before it is read, a chunked one as it arrives; over the worker's
  budget the answer is ``server_busy`` (503), over the client's ``too_many_uploads`` (429), both with Retry-After.
  Without it, 120 clients that each declared 20 MiB and sent all but the last byte took a worker to 3 GB;
* time: a body is abandoned when no byte has arrived for ``idle_seconds``, or when, after the first
  ``idle_seconds``, it has arrived at less than ``min_rate`` bytes a second on average (``request_timeout``, 408).
  A steady upload over a slow link is never cut off however long it takes; a drip-feeding client is.

The WSGI environ gets ``CONTENT_LENGTH`` = the buffered body's length (a chunked upload has no header for it, and
Flask saw an empty form) and ``wsgi.input_terminated``. Header names holding ``_`` are dropped, as nginx and
gunicorn do: ``Content_Length`` would otherwise land on the same WSGI key as ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BODY_ERROR = "ric.body_error"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MiB = 1024 * 1024


@dataclass(frozen=True)
class BodyLimits:
    """What one worker accepts of request bodies (see the module docstring)."""

    max_body: int = 20 * MiB
    idle_seconds: float = 10.0
    min_rate: float = 16 * 1024  # bytes/s averaged over the body; 0: off
    buffer_bytes: int = 160 * MiB
    client_bytes: int = 64 * MiB


class _Refused(Exception):
    """The body is not (or no longer) read; ``args[0]`` is the body error."""


class BufferBudget:
    """Bytes of request bodies one worker holds, in all and per client. Single-threaded (the event loop)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.used = 0
        self.by_client: dict[str, int] = {}

    def take(self, client: str, n: int) -> None:
        """Reserve ``n`` more bytes for ``client`` or raise :class:`_Refused` (nothing reserved then)."""
        mine = self.by_client.get(client, 0)
        if mine + n > self.per_client:
            raise _Refused("client_busy")
        if self.used + n > self.total:
            raise _Refused("server_busy")
        self.used += n
        self.by_client[client] = mine + n

    def give_back(self, client: str, n: int) -> None:
        self.used -= n
        left = self.by_client.get(client, 0) - n
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


class _Reservation:
    """One request's share of the budget, returned when the request is answered."""

    def __init__(self, budget: BufferBudget, client: str) -> None:
        self.budget, self.client, self.held = budget, client, 0

    def take(self, n: int) -> None:
        self.budget.take(self.client, n)
        self.held += n

    def release(self) -> None:
        if self.held:
            self.budget.give_back(self.client, self.held)
            self.held = 0


class WsgiOverRsgi:
    """An RSGI application (``__rsgi__``) wrapping a WSGI app built by ``factory`` once per worker process."""

    def __init__(self, factory: Callable[[], WsgiApp], limits: BodyLimits | None = None) -> None:
        self.factory = factory
        self.limits = limits or BodyLimits()
        self.buffers = BufferBudget(self.limits.buffer_bytes, self.limits.client_bytes)
        self.app: WsgiApp | None = None
        self._busy_seconds = 0.0  # time the loop spent running the app (nothing else runs meanwhile)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called in each worker process, after the fork: the app (and its model) are built there, never in the master.
        self.app = self.factory()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets are not served
            return
        reservation = _Reservation(self.buffers, scope.client.rpartition(":")[0])
        try:
            body, error = await self._read_body(scope, proto, reservation)
            environ = self._environ(scope, body, error)
            status, headers, payload = self._call(environ)
        finally:
            reservation.release()
        proto.response_bytes(status, headers, payload)

    async def _read_body(
        self, scope: Any, proto: Any, reservation: _Reservation
    ) -> tuple[io.BytesIO | None, str | None]:
        """The body (None when the request has none) or the body error."""
        headers = scope.headers
        length = headers.get("content-length")
        declared = None
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return io.BytesIO(), "bad_content_length"
            if declared < 0:
                return io.BytesIO(), "bad_content_length"
            if declared > self.limits.max_body:
                return io.BytesIO(), "body_too_large"
            if declared == 0:
                return io.BytesIO(), None
        elif "chunked" not in (headers.get("transfer-encoding") or "").lower():
            return None, None
        try:
            if declared is not None:
                reservation.take(declared)  # the whole body, before a byte of it is read
            return await self._receive(proto, reservation, chunked=declared is None), None
        except _Refused as refused:
            return io.BytesIO(), refused.args[0]
        except TimeoutError:
            return io.BytesIO(), "request_timeout"
        except Exception as exc:  # the client went away mid-body
            log.debug("request body not received: %s", exc)
            return io.BytesIO(), "request_timeout"

    async def _receive(self, proto: Any, reservation: _Reservation, *, chunked: bool) -> io.BytesIO:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def free() -> float:
            # Time this worker could have read the body: while the app runs (inline, on this loop) nothing is read,
            # and a body that arrived meanwhile must not count as idle (six large uploads queued on one worker
            # timed out behind each other).
            return loop.time() - self._busy_seconds

        start = last = free()
        state = {"size": 0, "expired": False}

        def check() -> None:
            nonlocal handle
            left = self._deadline(start, state["size"], last) - free()
            if left <= 0:
                state["expired"] = True
                task.cancel()
            else:
                handle = loop.call_later(left, check)

        handle = loop.call_later(self._deadline(start, 0, start) - start, check)
        # One growing buffer, not a list of chunks: a large buffer lives in its own mapping and goes back to the
        # system when freed, where thousands of 64 KiB chunks fragmented the heap (the memory stayed after the
        # connections were gone).
        body = io.BytesIO()
        try:
            async for chunk in proto:
                size = body.tell() + len(chunk)
                if size > self.limits.max_body:
                    raise _Refused("body_too_large")
                if chunked:
                    reservation.take(len(chunk))
                body.write(chunk)
                state["size"], last = size, free()
        except asyncio.CancelledError:
            if state["expired"]:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()
        body.seek(0)
        return body

    def _deadline(self, start: float, received: int, last: float) -> float:
        """When the body is overdue: no byte for ``idle_seconds`` after the ``last`` one, or (after the first
        ``idle_seconds``) an average below ``min_rate``, which ``received`` bytes keep up until
        ``start + received / min_rate``. Times on the worker's free clock (see :meth:`_receive`)."""
        idle = self.limits.idle_seconds
        if self.limits.min_rate <= 0:
            return last + idle
        return min(last + idle, start + max(idle, received / self.limits.min_rate))

    @staticmethod
    def _environ(scope: Any, body: io.BytesIO | None, error: str | None) -> dict[str, Any]:
        server_host, _, server_port = scope.server.rpartition(":")
        client_host, _, client_port = scope.client.rpartition(":")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_host,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": client_host,
            "REMOTE_PORT": client_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": body if body is not None else io.BytesIO(),
            "wsgi.input_terminated": True,  # the whole body is buffered: reading to its end is safe
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in scope.headers.items():
            if "_" in name:  # Content_Type would map onto CONTENT_TYPE, overriding the real header
                continue
            key = name.upper().replace("-", "_")
            if key == "CONTENT_LENGTH":
                continue  # set from the body actually buffered, below
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if body is not None:
            environ["CONTENT_LENGTH"] = str(body.seek(0, io.SEEK_END))
            body.seek(0)
        if error is not None:
            environ[BODY_ERROR] = error
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.app is not None, "__rsgi_init__ was not called"
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; Flask never uses it

        began = time.monotonic()
        result = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self._busy_seconds += time.monotonic() - began
        status, headers = started
        return int(status[:3]), [(str(k), str(v)) for k, v in headers], payload
