"""Serve the Flask (WSGI) app over granian's RSGI interface, with the request body buffered before the app runs.

Why not plain WSGI: a WSGI app reads its body from a blocking stream, so a client that sends headers and then
stalls holds a worker thread until it gives up; a handful of such clients stop an API. Here granian (Rust) reads the
connection, this adapter ``await``s the complete body on the worker's event loop (a stalled client costs one
connection and one suspended coroutine, nothing else), and only then calls the Flask app, inline on the loop thread:
the app's work is CPU-bound (decode, preprocess, infer: about a millisecond), so a thread hop would only add cost.

Limits: a declared ``Content-Length`` above ``max_body`` is not read at all; a chunked body is read until it passes
``max_body``; a body that has not fully arrived within ``body_timeout`` seconds is abandoned. In each case the app
is still called, with an empty body and ``environ["ric.body_error"]`` set (``body_too_large`` or
``request_timeout``), so the answer is the API's usual JSON error and the metrics count it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

BODY_ERROR = "ric.body_error"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WsgiOverRsgi:
    """An RSGI application (``__rsgi__``) wrapping a WSGI app built by ``factory`` once per worker process."""

    def __init__(self, factory: Callable[[], WsgiApp], *, max_body: int, body_timeout: float = 10.0) -> None:
        self.factory = factory
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.app: WsgiApp | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called in each worker process, after the fork: the app (and its model) are built there, never in the master.
        self.app = self.factory()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets are not served
            return
        body, error = await self._read_body(scope, proto)
        environ = self._environ(scope, body, error)
        status, headers, payload = self._call(environ)
        proto.response_bytes(status, headers, payload)

    async def _read_body(self, scope: Any, proto: Any) -> tuple[bytes, str | None]:
        headers = scope.headers
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return b"", "bad_content_length"
            if declared > self.max_body:
                return b"", "body_too_large"
            if declared == 0:
                return b"", None
        elif "chunked" not in (headers.get("transfer-encoding") or "").lower():
            return b"", None
        try:
            if length is not None:
                return await asyncio.wait_for(proto(), self.body_timeout), None
            return await asyncio.wait_for(self._read_chunked(proto), self.body_timeout)
        except TimeoutError:
            return b"", "request_timeout"
        except Exception as exc:  # the client went away mid-body
            log.debug("request body not received: %s", exc)
            return b"", "request_timeout"

    async def _read_chunked(self, proto: Any) -> tuple[bytes, str | None]:
        parts, size = [], 0
        async for chunk in proto:
            size += len(chunk)
            if size > self.max_body:
                return b"", "body_too_large"
            parts.append(chunk)
        return b"".join(parts), None

    @staticmethod
    def _environ(scope: Any, body: bytes, error: str | None) -> dict[str, Any]:
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
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in scope.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                key = "HTTP_" + key
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if error is not None:
            environ[BODY_ERROR] = error
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.app is not None, "__rsgi_init__ was not called"
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; Flask never uses it

        result = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return int(status[:3]), [(str(k), str(v)) for k, v in headers], payload
