"""Logging set-up shared by the stage scripts: one line per event, to stderr, with credentials masked
(:func:`common.redact.redact`) in every record a handler writes."""

from __future__ import annotations

import logging
import os
import sys

from common.redact import redact

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Masks credentials in URLs of every record a handler writes (our messages and third-party ones alike)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; ``LOG_LEVEL`` overrides the level."""
    level_name = os.environ.get("LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(level=getattr(logging, level_name, logging.INFO), format=_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # Third-party chatter drowns the stage's own progress lines.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "mlflow.store", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
