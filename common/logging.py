"""Logging set-up shared by the stage scripts: one line per event, to stderr."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; ``LOG_LEVEL`` overrides the level."""
    level_name = os.environ.get("LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(level=getattr(logging, level_name, logging.INFO), format=_FORMAT, stream=sys.stderr)
    # Third-party chatter drowns the stage's own progress lines.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "mlflow.store", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
