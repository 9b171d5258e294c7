"""The RSGI front of the API (model_serving/rsgi.py), in process, with a hand-written fake of granian's scope and
protocol objects: the WSGI environ it builds, how it reads (or refuses to read) bodies, and what it answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from model_serving.rsgi import BODY_ERROR, BodyLimits, WsgiOverRsgi


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


def serve(scope: FakeScope, proto: FakeProto, **limits) -> tuple[int, dict, dict]:
    limits.setdefault("max_body", 100)
    front = WsgiOverRsgi(lambda: echo_app, BodyLimits(**limits))
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
    _, _, answer = serve(scope, proto, idle_seconds=0.05, max_body=5000)
    assert answer["environ"][BODY_ERROR] == "request_timeout" and answer["body"] == ""


@pytest.mark.parametrize("length", ["-", "12abc"])
def test_a_malformed_content_length_is_a_bad_request(length):
    _, _, answer = serve(FakeScope("POST", "/predict", [("content-length", length)]), FakeProto([b"x"]))
    assert answer["environ"][BODY_ERROR] == "bad_content_length"


def test_a_request_without_a_body_is_passed_on_at_once():
    proto = FakeProto([b"never read"])
    _, _, answer = serve(FakeScope("GET", "/health", []), proto)
    assert answer["body"] == "" and proto.reads == 0 and BODY_ERROR not in answer["environ"]


def test_a_chunked_body_gets_its_length_so_flask_parses_the_upload():
    # A streamed upload (Go, Java, proxies that do not buffer) has no Content-Length: Flask saw an empty form and
    # answered 400 no_file, telling the client to send what it had sent.
    from model_serving.factory import create_app
    from tests.support.api import encode, item_image
    from tests.support.fakes import FakePredictor

    png = encode(item_image())
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png + b"\r\n--b--\r\n"
    front = WsgiOverRsgi(lambda: create_app(FakePredictor(), background=False), BodyLimits())
    front.__rsgi_init__(None)
    headers = [("content-type", "multipart/form-data; boundary=b"), ("transfer-encoding", "chunked")]
    proto = FakeProto([body[i : i + 100] for i in range(0, len(body), 100)])
    asyncio.run(front.__rsgi__(FakeScope("POST", "/predict", headers), proto))
    status, _, answer = proto.response
    assert status == 200, answer
    assert json.loads(answer)["filename"] == "a.png"


def test_header_names_with_underscores_are_dropped():
    headers = [("content-type", "text/plain"), ("content_type", "evil/x"), ("content_length", "1"), ("x_a", "1")]
    _, _, answer = serve(FakeScope("POST", "/p", [*headers, ("content-length", "5")]), FakeProto([b"hello"]))
    env = answer["environ"]
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "5" and answer["body"] == "hello"
    assert "HTTP_X_A" not in env and "HTTP_CONTENT_TYPE" not in env


def _front(**limits) -> WsgiOverRsgi:
    front = WsgiOverRsgi(lambda: echo_app, BodyLimits(**limits))
    front.__rsgi_init__(None)
    return front


def test_bodies_held_at_once_are_bounded_per_worker_and_per_client():
    front = _front(max_body=100, buffer_bytes=250, client_bytes=150)

    async def scenario() -> list[str | None]:
        stalled = [FakeProto([b"x" * 10], stall=True) for _ in range(3)]
        clients = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]
        tasks = []
        for proto, client in zip(stalled, clients, strict=True):  # 3 x 80 declared: 240 of the 250 held
            scope = FakeScope("POST", "/p", [("content-length", "80")])
            scope.client = client
            tasks.append(asyncio.create_task(front.__rsgi__(scope, proto)))
        await asyncio.sleep(0.05)
        outcomes = []
        for client in ("10.0.0.4:1", "10.0.0.1:2"):  # a new client: the worker is full; the first one: its share
            proto = FakeProto([b"y" * 80])
            scope = FakeScope("POST", "/p", [("content-length", "80")])
            scope.client = client
            await front.__rsgi__(scope, proto)
            outcomes.append(json.loads(proto.response[2])["environ"].get(BODY_ERROR))
            assert proto.reads == 0  # refused without reading a byte
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes

    assert asyncio.run(scenario()) == ["server_busy", "client_busy"]
    assert front.buffers.used == 0 and front.buffers.by_client == {}  # every reservation came back
    _, _, answer = serve(FakeScope("POST", "/p", [("content-length", "80")]), FakeProto([b"z" * 80]), max_body=100)
    assert answer["body"] == "z" * 80


def test_a_chunked_body_counts_against_the_budget_as_it_arrives():
    proto = FakeProto([b"x" * 60, b"y" * 60, b"z" * 60])
    _, _, answer = serve(
        FakeScope("POST", "/p", [("transfer-encoding", "chunked")]), proto, max_body=500, buffer_bytes=100
    )
    assert answer["environ"][BODY_ERROR] == "server_busy" and proto.reads == 2


def test_a_steady_slow_upload_is_never_cut_off_but_a_drip_feed_is():
    # 30 pieces 0.1 s apart: 3 s in all, three times the 1 s idle timeout (the whole-upload timeout cut such a
    # photo off at 10 s, on every retry).
    steady = FakeProto([b"s" * 2000] * 30, delay=0.1)
    _, _, answer = serve(
        FakeScope("POST", "/p", [("content-length", "60000")]),
        steady,
        max_body=100_000,
        idle_seconds=1.0,
        min_rate=1000,
    )
    assert BODY_ERROR not in answer["environ"] and len(answer["body"]) == 60_000
    # Never idle for a second, but 10 bytes a piece: 100 bytes/s, below the minimum rate once a second has passed.
    drip = FakeProto([b"d" * 10] * 30, delay=0.1)
    _, _, answer = serve(
        FakeScope("POST", "/p", [("content-length", "300")]), drip, max_body=100_000, idle_seconds=1.0, min_rate=1000
    )
    assert answer["environ"][BODY_ERROR] == "request_timeout" and drip.reads < 30
