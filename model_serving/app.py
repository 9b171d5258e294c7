"""The Refund Item Classifier API: ``python model_serving/app.py`` runs its server.

Usage: python model_serving/app.py [--host 127.0.0.1] [--port 5001] [--workers 2] [--body-timeout 10] [-v]

The product's documented command: the server's command line (:mod:`model_serving.server`, granian; every flag is in
its ``--help``), never Flask's development server. Each worker builds the app with
:func:`model_serving.factory.create_app`.

Exit codes: those of the server: 0 clean shutdown, 1 the server failed to start, 2 bad command line.
"""

from __future__ import annotations

from model_serving.server import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
