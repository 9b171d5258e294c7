"""Run the API under granian (a Rust HTTP server), one model per worker process, with slow clients held off the app.

Usage: python -m model_serving.server [--host 127.0.0.1] [--port 5001] [--workers 2] [--body-timeout 10]
       [--body-min-rate 16384] [--header-timeout 5] [--max-connections 4096] [--graceful-timeout 30]
       [--backlog 2048] [--poll-seconds 30] [--model-uri URI] [--tracking-uri URI]
       [--runtime auto|exported|keras|litert-int8|litert|onnx] [--access-log] [-v]

(``python model_serving/app.py`` and ``ric serve`` are the same command.)

* granian reads and writes the connections in Rust. Each worker process runs the Flask app through
  :class:`model_serving.rsgi.WsgiOverRsgi`, which awaits the whole request body before the app runs: a client that
  stalls costs one connection and a suspended coroutine, never a worker. Headers must arrive within
  ``--header-timeout`` seconds; a body may not pause for more than ``--body-timeout`` seconds nor, after that, arrive
  slower than ``--body-min-rate`` bytes a second on average (408 otherwise); a declared body over
  ``SERVING_MAX_UPLOAD_BYTES`` is refused (413) without being read. The bodies a worker holds are bounded in all
  (``SERVING_BODY_BUFFER_BYTES``, 503 above) and per client address (``SERVING_CLIENT_BUFFER_BYTES``, 429 above).
* Each worker serves at most ``--max-connections`` connections at once (idle ones included; more wait in the
  listen backlog); the server raises its open-files limit to fit them. A start on an address that is already
  served (another API, possibly another model) fails at once: exit 1, one line.
* The app's work is CPU-bound (decode, preprocess, infer: about a millisecond), so each worker runs it inline, one
  request at a time: one worker per core, no threads to fight over the cores. Chosen by measurement (docs/serving.md).
* Each worker builds the app (and loads its model) after the fork; the master loads no model and never imports
  TensorFlow.
* Each start gets a fresh runtime directory (``SERVING_RUNTIME_DIR``, default a new temp dir) holding
  ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess files, so ``/metrics`` adds up all workers), the
  shared drift window, and the admin-reload signal file; it is removed on exit.
* A worker that dies is started again. SIGTERM (or Ctrl-C) is a graceful shutdown: the listener closes, requests in
  flight are answered (up to ``--graceful-timeout`` seconds), then the workers exit.

Exit codes: 0 clean shutdown; 1 the server failed to start (the port is taken: one line); 2 bad command line or
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import multiprocessing
import os
import resource
import shutil
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Flask
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import Server

from common.cli import (
    command_parser,
    fail,
    from_env,
    help_settings,
    non_negative_float,
    positive_float,
    positive_int,
    read_settings,
)
from common.logging import setup_logging
from common.settings import RUNTIME_CHOICES, Settings
from data_processing.sandbox import shared_sandbox
from model_serving.factory import create_app
from model_serving.metrics import forget_dead_processes
from model_serving.rsgi import BodyLimits, WsgiOverRsgi

log = logging.getLogger(__name__)

# What main() decided, for the worker processes: they are forked from it, so they inherit this module's state.
_SERVER: dict[str, Any] = {}
PROG = "ric serve"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; defaults come from the environment's settings (``settings.serving``)."""
    top = settings or Settings()
    serving = top.serving
    p = command_parser("serve", __doc__)
    p.add_argument("--host", default=serving.host, help="bind address ($SERVING_HOST)")
    p.add_argument("--port", type=positive_int, default=serving.port, help="port ($SERVING_PORT)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=serving.workers,
        help="worker processes, each with its own model ($SERVING_WORKERS; one per core unless set)",
    )
    p.add_argument(
        "--body-timeout",
        type=positive_float,
        default=10.0,
        help="seconds a request body may go without a byte arriving before the answer is 408 (a stalled client)",
    )
    p.add_argument(
        "--body-min-rate",
        type=non_negative_float,
        default=16384.0,
        help="bytes a second a body must average once it has taken --body-timeout seconds (0: no minimum)",
    )
    p.add_argument(
        "--header-timeout", type=positive_float, default=5.0, help="seconds the request headers may take to arrive"
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        default=4096,
        help="connections each worker serves at once, idle ones included (more wait in the listen backlog)",
    )
    p.add_argument(
        "--graceful-timeout", type=positive_int, default=30, help="seconds in-flight requests get to finish on SIGTERM"
    )
    p.add_argument("--backlog", type=positive_int, default=2048, help="listen backlog")
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=serving.poll_seconds,
        help="re-resolve the model alias this often, 0: never ($MODEL_POLL_SECONDS)",
    )
    p.add_argument("--model-uri", default=None, help=f"model to serve (default {from_env(top, 'model_uri')})")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking/registry store (default {from_env(top, 'mlflow_tracking_uri')})",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=serving.runtime,
        help="auto: the fastest at batch 1 on this CPU of the version's runtimes that passed parity and the Keras "
        "graph (timed once per CPU and version; the Keras graph alone for a version without an export); exported: "
        "the export's preferred runtime, no fallback; keras, litert-int8, litert, onnx: that one ($SERVING_RUNTIME)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def make_rsgi_app() -> WsgiOverRsgi:
    """The RSGI application of one worker (granian calls this factory in each worker, after the fork)."""
    settings: Settings = _SERVER.get("settings") or Settings.from_env()

    def factory() -> Flask:
        setup_logging(_SERVER.get("verbose", False), settings.log_level)
        forget_dead_processes()  # a worker that died (and was replaced) leaves live gauges behind
        shared_sandbox().start()  # the stoppable decoder child: started now, not by the first large photo
        return create_app(settings=settings, load_in_background=True)

    serving = settings.serving
    limits = BodyLimits(
        max_body=serving.max_upload_bytes,
        idle_seconds=_SERVER.get("body_timeout", 10.0),
        min_rate=_SERVER.get("body_min_rate", 16384.0),
        buffer_bytes=serving.body_buffer_bytes,
        client_bytes=serving.client_buffer_bytes,
    )
    return WsgiOverRsgi(factory, limits)


def _run_granian(args: argparse.Namespace) -> None:
    server = Server(
        "model_serving.server:make_rsgi_app",
        factory=True,
        interface=Interfaces.RSGI,
        address=args.host,
        port=args.port,
        workers=args.workers,
        runtime_threads=1,
        http=HTTPModes.http1,
        websockets=False,
        backlog=args.backlog,
        backpressure=args.max_connections,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, int(args.header_timeout * 1000))),
        log_access=args.access_log,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, args.graceful_timeout),
    )
    server.serve()


def address_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served, or None. granian's workers bind with SO_REUSEPORT, which lets a second
    server bind the same port and take half the connections: this probe binds without it (SO_REUSEADDR only, so a
    port in TIME_WAIT after a restart is free), which fails while anything listens there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"the address cannot be resolved ({exc.strerror or exc})"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return "the address is already in use" if exc.errno == errno.EADDRINUSE else str(exc.strerror or exc)
    return None


def fit_open_files(connections: int) -> None:
    """Raise this process's open-files limit (its workers inherit it) towards what ``connections`` need, up to the
    hard limit: at the usual soft limit of 1,024 a worker could hold no more than ~1,000 idle connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256  # the listener, model files, the runtime dir, the decoder's pipes, ...
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open-files limit %d: each worker can hold about %d connections", new, new - 256)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    settings = read_settings(PROG, ("serving", "learning"))
    if settings is None:
        return 2
    setup_logging(args.verbose, settings.log_level)
    busy = address_in_use(args.host, args.port)
    if busy is not None:
        hint = "is another API running there? stop it, or use --port"
        log.error("cannot serve on %s:%d: %s (%s)", args.host, args.port, busy, hint)
        return 1
    fit_open_files(args.max_connections)
    own_runtime_dir = settings.serving.runtime_dir is None
    runtime = settings.serving.runtime_dir or Path(tempfile.mkdtemp(prefix="ric-serving-"))
    prom_dir = runtime / "prometheus"
    prom_dir.mkdir(parents=True, exist_ok=True)
    # prometheus_client's own variable (it reads it to choose multiprocess mode): every worker's metrics go to
    # files here, and /metrics merges them.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own variable (only a Keras fallback loads it)
    serving = replace(
        settings.serving,
        host=args.host,
        port=args.port,
        workers=args.workers,
        poll_seconds=args.poll_seconds,
        runtime=args.runtime,
        runtime_dir=runtime,
        window_dir=settings.serving.window_dir or runtime / "drift-window",
        runtime_threads=settings.serving.runtime_threads or 1,  # one worker per core: one runtime thread each
    )
    settings = replace(
        settings.with_overrides(model_uri=args.model_uri, mlflow_tracking_uri=args.tracking_uri), serving=serving
    )
    _SERVER.update(
        settings=settings, body_timeout=args.body_timeout, body_min_rate=args.body_min_rate, verbose=args.verbose
    )
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)  # the workers inherit _SERVER
    log.info(
        "serving %s on http://%s:%d with %d granian worker(s); runtime dir %s",
        settings.model_uri,
        args.host,
        args.port,
        args.workers,
        runtime,
    )
    try:
        _run_granian(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return 0 if code == 0 else 1
    except OSError as exc:  # e.g. the port is taken
        fail(PROG, f"the server could not start on {args.host}:{args.port}: {exc}")
        return 1
    finally:
        if own_runtime_dir:  # a directory this start made (an operator's own one is kept)
            shutil.rmtree(runtime, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
