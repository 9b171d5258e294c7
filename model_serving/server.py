"""Run the API under gunicorn (a production WSGI server), one model per worker process.

Usage: python -m model_serving.server [--host 127.0.0.1] [--port 5001] [--workers 2] [--threads 4]
       [--worker-class gthread|sync] [--timeout 30] [--graceful-timeout 30] [--poll-seconds 30] [-v]

(``python model_serving/app.py`` is the same command.)

* Each worker builds the app (and loads TensorFlow and the model) after the fork: TensorFlow is not
  fork-safe, so nothing of it is imported by the master.
* Each start gets a fresh runtime directory (``SERVING_RUNTIME_DIR``, default a new temp dir) holding
  ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess files, so ``/metrics`` adds up all workers),
  the shared drift window, and the admin-reload signal file. A dead worker's live gauges are dropped
  (``mark_process_dead``); the directory is removed on exit.
* Each worker listens on its own ``SO_REUSEPORT`` socket (the kernel balances connections across workers;
  with one shared socket, keep-alive clients pile up on whichever worker accepted first).
* SIGTERM (or Ctrl-C) is a graceful shutdown: listeners close, requests in flight are answered (up to
  ``--graceful-timeout`` seconds), then the workers exit.

Exit codes: 0 clean shutdown, 1 the server failed to start, 2 bad command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common.logging import setup_logging

log = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="python model_serving/app.py", description="Serve the Refund Item Classifier API with gunicorn."
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
        "--threads",
        type=int,
        default=_env_int("SERVING_THREADS", 4),
        help="threads per worker for the gthread worker class (SERVING_THREADS)",
    )
    p.add_argument(
        "--worker-class",
        choices=("gthread", "sync"),
        default=os.environ.get("SERVING_WORKER_CLASS", "gthread"),
        help="gunicorn worker class: gthread (keep-alive, threads) or sync (SERVING_WORKER_CLASS)",
    )
    p.add_argument(
        "--microbatch",
        type=int,
        default=None,
        help="merge concurrent requests of a worker into one forward pass of up to N images "
        "(SERVING_MICROBATCH; default: 16 with --threads > 1, else off)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=120,
        help="seconds before a silent worker is restarted (also bounds a worker's boot: TensorFlow + model load)",
    )
    p.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds in-flight requests get to finish on SIGTERM"
    )
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog")
    p.add_argument(
        "--no-reuse-port",
        dest="reuse_port",
        action="store_false",
        help="share the master's listening socket instead of one SO_REUSEPORT socket per worker",
    )
    p.add_argument(
        "--poll-seconds", type=float, default=None, help="re-resolve the model alias this often (MODEL_POLL_SECONDS)"
    )
    p.add_argument("--model-uri", default=None, help="model to serve (MODEL_URI)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry store (MLFLOW_TRACKING_URI)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    from monitoring.metrics import mark_process_dead

    def child_exit(server: Any, worker: Any) -> None:
        mark_process_dead(worker.pid)

    def worker_exit(server: Any, worker: Any) -> None:
        # Requests are answered by now. Run the atexit hooks (the drift window flushes its buffer), then skip
        # the interpreter teardown: unwinding TensorFlow's thread pools can take many seconds.
        # Only on a clean exit: a boot failure must keep its exit code for the master.
        exc = sys.exc_info()[1]
        if exc is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            return
        import atexit

        atexit._run_exitfuncs()
        logging.shutdown()
        os._exit(0)

    options: dict[str, Any] = {
        "bind": f"{args.host}:{args.port}",
        "workers": max(1, args.workers),
        "worker_class": args.worker_class,
        "threads": max(1, args.threads),
        "timeout": args.timeout,
        "graceful_timeout": args.graceful_timeout,
        "keepalive": 5,
        "backlog": args.backlog,
        # One SO_REUSEPORT socket per worker: the kernel spreads new connections over the workers. With one
        # shared socket, whichever worker wakes first accepts a burst of keep-alive connections and serves
        # them all on one core while the other idles.
        "reuse_port": args.reuse_port,
        "preload_app": False,  # TensorFlow must be imported after the fork
        "control_socket_disable": True,  # gunicorn >= 26: no control socket (nothing uses it)
        "child_exit": child_exit,
        "worker_exit": worker_exit,
        "accesslog": "-" if args.access_log else None,
        "errorlog": "-",
        "loglevel": "debug" if args.verbose else "info",
        "proc_name": "refund-item-classifier",
    }
    return options


def _run_gunicorn(options: dict[str, Any]) -> None:
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            known = self.cfg.settings
            for key, value in options.items():
                if key in known and value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from model_serving.app import create_app

            return create_app()

    _App().run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.model_uri:
        os.environ["MODEL_URI"] = args.model_uri
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if args.poll_seconds is not None:
        os.environ["MODEL_POLL_SECONDS"] = str(args.poll_seconds)
    microbatch = args.microbatch
    if microbatch is None:
        microbatch = _env_int("SERVING_MICROBATCH", 16 if args.worker_class == "gthread" and args.threads > 1 else 0)
    os.environ["SERVING_MICROBATCH"] = str(microbatch)
    os.environ.setdefault("SERVING_TF_THREADS", "1")  # one worker per core: one TF/BLAS thread each
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    runtime = Path(tempfile.mkdtemp(prefix="ric-serving-"))
    prom_dir = runtime / "prometheus"
    prom_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    os.environ.setdefault("DRIFT_WINDOW_DIR", str(runtime / "drift-window"))
    os.environ["SERVING_RUNTIME_DIR"] = str(runtime)
    log.info(
        "serving on http://%s:%d with %d %s worker(s) x %d thread(s), micro-batch %d; runtime dir %s",
        args.host,
        args.port,
        args.workers,
        args.worker_class,
        args.threads,
        microbatch,
        runtime,
    )
    try:
        _run_gunicorn(gunicorn_options(args))
    except SystemExit as exc:  # gunicorn exits through SystemExit (e.g. the port is taken)
        code = exc.code if isinstance(exc.code, int) else 1
        return 0 if code == 0 else 1
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
