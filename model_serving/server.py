"""Run the API under granian (a Rust HTTP server), one model per worker process, with slow clients held off the app.

Usage: python -m model_serving.server [--host 127.0.0.1] [--port 5001] [--workers 2] [--body-timeout 10]
       [--header-timeout 5] [--graceful-timeout 30] [--backlog 2048] [--poll-seconds 30] [--model-uri URI]
       [--tracking-uri URI] [--runtime auto|exported|keras] [--access-log] [-v]

(``python model_serving/app.py`` is the same command.)

* granian reads and writes the connections in Rust. Each worker process runs the Flask app through
  :class:`model_serving.rsgi.WsgiOverRsgi`, which awaits the whole request body before the app runs: a client that
  stalls costs one connection and a suspended coroutine, never a worker. Headers must arrive within
  ``--header-timeout`` seconds and the body within ``--body-timeout`` seconds (408 otherwise); a declared body over
  ``SERVING_MAX_UPLOAD_BYTES`` is refused (413) without being read.
* The app's work is CPU-bound (decode, preprocess, infer: about a millisecond), so each worker runs it inline, one
  request at a time: one worker per core, no threads to fight over the cores. Chosen by measurement (docs/serving.md).
* Each worker builds the app (and loads its model) after the fork; the master imports no model code.
* Each start gets a fresh runtime directory (``SERVING_RUNTIME_DIR``, default a new temp dir) holding
  ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess files, so ``/metrics`` adds up all workers), the
  shared drift window, and the admin-reload signal file; it is removed on exit.
* A worker that dies is started again. SIGTERM (or Ctrl-C) is a graceful shutdown: the listener closes, requests in
  flight are answered (up to ``--graceful-timeout`` seconds), then the workers exit.

Exit codes: 0 clean shutdown, 1 the server failed to start, 2 bad command line.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common.logging import setup_logging

log = logging.getLogger(__name__)

# What main() decided, for the worker processes: they are forked from it, so they inherit this module's state.
_SERVER: dict[str, Any] = {}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="python model_serving/app.py", description="Serve the Refund Item Classifier API with granian."
    )
    p.add_argument("--host", default=os.environ.get("SERVING_HOST", "127.0.0.1"), help="bind address (SERVING_HOST)")
    p.add_argument("--port", type=int, default=_env_int("SERVING_PORT", 5001), help="port (SERVING_PORT)")
    p.add_argument(
        "--workers",
        type=int,
        default=_env_int("SERVING_WORKERS", cores),
        help="worker processes, each with its own model (SERVING_WORKERS; default: one per core)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds a request body may take to arrive before the answer is 408 (a stalled client)",
    )
    p.add_argument("--header-timeout", type=float, default=5.0, help="seconds the request headers may take to arrive")
    p.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds in-flight requests get to finish on SIGTERM"
    )
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog")
    p.add_argument(
        "--poll-seconds", type=float, default=None, help="re-resolve the model alias this often (MODEL_POLL_SECONDS)"
    )
    p.add_argument("--model-uri", default=None, help="model to serve (MODEL_URI)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry store (MLFLOW_TRACKING_URI)")
    p.add_argument(
        "--runtime",
        choices=("auto", "exported", "keras"),
        default=None,
        help="auto: the version's exported runtime, else the Keras graph; exported: refuse the fallback; "
        "keras: always the Keras graph (SERVING_RUNTIME)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def make_rsgi_app() -> Any:
    """The RSGI application of one worker (granian calls this factory in each worker, after the fork)."""
    from model_serving.rsgi import WsgiOverRsgi

    def factory() -> Any:
        from model_serving.app import create_app
        from monitoring.metrics import forget_dead_processes

        setup_logging(_SERVER.get("verbose", False))
        forget_dead_processes()  # a worker that died (and was replaced) leaves live gauges behind
        return create_app(settings=_SERVER.get("settings"), config=_SERVER.get("config"))

    max_body = _SERVER.get("max_body") or 20 * 1024 * 1024
    return WsgiOverRsgi(factory, max_body=max_body, body_timeout=_SERVER.get("body_timeout", 10.0))


def _run_granian(args: argparse.Namespace) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        "model_serving.server:make_rsgi_app",
        factory=True,
        interface=Interfaces.RSGI,
        address=args.host,
        port=args.port,
        workers=max(1, args.workers),
        runtime_threads=1,
        http=HTTPModes.http1,
        websockets=False,
        backlog=args.backlog,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, int(args.header_timeout * 1000))),
        log_access=args.access_log,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, args.graceful_timeout),
    )
    server.serve()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    setup_logging(args.verbose)
    from common.settings import Settings
    from model_serving.app import config_from_env

    try:
        settings = Settings.from_env().with_overrides(model_uri=args.model_uri, mlflow_tracking_uri=args.tracking_uri)
        config = config_from_env()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    runtime = Path(config["RIC_RUNTIME_DIR"] or tempfile.mkdtemp(prefix="ric-serving-"))
    prom_dir = runtime / "prometheus"
    prom_dir.mkdir(parents=True, exist_ok=True)
    # prometheus_client's own variable: every worker's metrics go to files here, and /metrics merges them.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own variable (only a Keras fallback loads it)
    overrides: dict[str, Any] = {
        "RIC_RUNTIME_DIR": str(runtime),
        "RIC_WINDOW_DIR": config["RIC_WINDOW_DIR"] or str(runtime / "drift-window"),
        "RIC_TF_THREADS": config["RIC_TF_THREADS"] or 1,  # one worker per core: one runtime thread each
        "RIC_LOAD_IN_BACKGROUND": True,  # /health answers from the first moment, whatever the registry does
    }
    if args.poll_seconds is not None:
        overrides["RIC_POLL_SECONDS"] = args.poll_seconds
    if args.runtime is not None:
        overrides["RIC_RUNTIME"] = args.runtime
    _SERVER.update(
        settings=settings,
        config=overrides,
        max_body=int(config["MAX_CONTENT_LENGTH"]),
        body_timeout=args.body_timeout,
        verbose=args.verbose,
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
        log.error("the server could not start: %s", exc)
        return 1
    finally:
        if not config["RIC_RUNTIME_DIR"]:  # a directory this start made (an operator's own one is kept)
            shutil.rmtree(runtime, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
