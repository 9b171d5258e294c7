"""The RSGI front of the API (model_serving/rsgi.py), in process, with a hand-written fake of granian's scope and
protocol objects: the WSGI environ it builds, how it reads (or refuses to read) bodies, and what it answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from model_serving.rsgi import BODY_ERROR, WsgiOverRsgi


class FakeHeaders:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def get(self, key: str, default=None):
        return next((v for k, v in self.pairs if k == key), default)


class FakeScope:
    proto = "http"
    http_version = "1.1"
    server = "127.0.0.1:5001"
    client = "127.0.0.1:40000"
    scheme = "http"

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], query: str = "") -> None:
        self.method, self.path, self.query_string = method, path, query
        self.headers = FakeHeaders(headers)


class FakeProto:
    """Delivers ``chunks`` (each after ``delay`` seconds); ``stall`` never delivers the rest."""

    def __init__(self, chunks: list[bytes], *, delay: float = 0.0, stall: bool = False) -> None:
        self.chunks, self.delay, self.stall = chunks, delay, stall
        self.reads = 0
        self.response: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def __call__(self) -> bytes:
        out = b""
        async for chunk in self:
            out += chunk
        return out

    async def _gen(self):
        for chunk in self.chunks:
            await asyncio.sleep(self.delay)
            self.reads += 1
            yield chunk
        if self.stall:
            await asyncio.sleep(3600)

    def __aiter__(self):
        return self._gen()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.response = (status, headers, body)


def echo_app(environ, start_response):
    """Answers what it saw: the body and the environ keys a WSGI app relies on."""
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if isinstance(v, str)}
    out = json.dumps({"body": body.decode("latin-1"), "environ": seen}).encode()
    start_response("201 Created", [("Content-Type", "application/json"), ("X-Test", "1")])
    return [out[:10], out[10:]]


def serve(scope: FakeScope, proto: FakeProto, **kwargs) -> tuple[int, dict, dict]:
    front = WsgiOverRsgi(lambda: echo_app, max_body=kwargs.pop("max_body", 100), **kwargs)
    front.__rsgi_init__(None)
    asyncio.run(front.__rsgi__(scope, proto))
    assert proto.response is not None
    status, headers, body = proto.response
    answer = json.loads(body)
    return status, dict(headers), answer


def test_the_app_sees_a_complete_wsgi_request():
    scope = FakeScope(
        "POST",
        "/predict",
        [("content-type", "text/plain"), ("content-length", "5"), ("x-tag", "a"), ("x-tag", "b"), ("host", "h")],
        query="format=json",
    )
    status, headers, answer = serve(scope, FakeProto([b"he", b"llo"]))
    assert status == 201 and headers["X-Test"] == "1"
    env = answer["environ"]
    assert answer["body"] == "hello"
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/predict" and env["QUERY_STRING"] == "format=json"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "5"
    assert env["HTTP_X_TAG"] == "a,b" and env["HTTP_HOST"] == "h"  # repeated headers joined, as WSGI wants
    assert env["SERVER_PORT"] == "5001" and env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert BODY_ERROR not in env


def test_a_declared_body_over_the_limit_is_not_read():
    proto = FakeProto([b"x" * 50])
    _, _, answer = serve(FakeScope("POST", "/predict", [("content-length", "101")]), proto)
    assert answer["environ"][BODY_ERROR] == "body_too_large" and answer["body"] == ""
    assert proto.reads == 0


def test_a_chunked_body_is_cut_off_at_the_limit():
    proto = FakeProto([b"x" * 60, b"y" * 60, b"z" * 60])
    _, _, answer = serve(FakeScope("POST", "/predict", [("transfer-encoding", "chunked")]), proto)
    assert answer["environ"][BODY_ERROR] == "body_too_large" and proto.reads == 2
    _, _, small = serve(FakeScope("POST", "/p", [("transfer-encoding", "chunked")]), FakeProto([b"ab", b"cd"]))
    assert small["body"] == "abcd" and BODY_ERROR not in small["environ"]


def test_a_stalled_body_is_abandoned_after_the_body_timeout():
    proto = FakeProto([b"abc"], stall=True)
    scope = FakeScope("POST", "/predict", [("content-length", "1000")])
    _, _, answer = serve(scope, proto, body_timeout=0.05, max_body=5000)
    assert answer["environ"][BODY_ERROR] == "request_timeout" and answer["body"] == ""


@pytest.mark.parametrize("length", ["-", "12abc"])
def test_a_malformed_content_length_is_a_bad_request(length):
    _, _, answer = serve(FakeScope("POST", "/predict", [("content-length", length)]), FakeProto([b"x"]))
    assert answer["environ"][BODY_ERROR] == "bad_content_length"


def test_a_request_without_a_body_is_passed_on_at_once():
    proto = FakeProto([b"never read"])
    _, _, answer = serve(FakeScope("GET", "/health", []), proto)
    assert answer["body"] == "" and proto.reads == 0 and BODY_ERROR not in answer["environ"]
