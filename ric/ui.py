"""Open the MLflow UI on the project's tracking store: ``mlflow ui`` on a local store, or a tracking server's address.

Usage: ric ui [--host 127.0.0.1] [--port 5000] [--tracking-uri URI]      (also: python -m ric.ui, make ui)

For the embedded SQLite store (the default, ``<project>/mlflow.db``) this runs ``mlflow ui`` on it, with new
experiments' artifacts beside it (``mlartifacts/``, where the stages write theirs), at http://127.0.0.1:5000 until
Ctrl-C. When ``MLFLOW_TRACKING_URI`` names a tracking server, the server is the UI: its address is printed (without
credentials). The dashboard links the served version to the UI at ``MLFLOW_UI_URL`` (the same address by default).

Exit codes: 0 the UI was stopped (Ctrl-C), or the tracking server's address was printed; 1 the UI could not start
(the port is taken: one line); 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.settings import UI_PORT, Settings
from common.tracking import local_artifact_root

PROG = "ric ui"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("ui", __doc__)
    p.add_argument("--host", default="127.0.0.1", help="bind address of the UI")
    p.add_argument("--port", type=positive_int, default=UI_PORT, help="port of the UI")
    p.add_argument("--tracking-uri", help=f"the store to show (default {from_env(env, 'mlflow_tracking_uri')})")
    return p


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line for a local store. Pure."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host]
    artifacts = local_artifact_root(tracking_uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return [*cmd, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (settings := read_settings(PROG)) is None:
        return 2
    settings = settings.with_overrides(mlflow_tracking_uri=args.tracking_uri)
    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        print(f"the tracking server serves its own UI: open {settings.mlflow_ui_url}")
        return 0
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            fail(PROG, f"cannot serve the UI on {args.host}:{args.port} ({exc.strerror}): another UI? use --port")
            return 1
    print(f"MLflow UI of {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return 0 if subprocess.run(ui_command(uri, args.host, args.port), check=False).returncode in (0, -2) else 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
