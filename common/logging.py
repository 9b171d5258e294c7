"""Logging set-up shared by the stage scripts: one line per event, to stderr, with credentials masked
(:func:`common.redact.redact`) in every record a handler writes."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

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


def setup_logging(verbose: bool = False, level: str | None = None) -> None:
    """Configure the root logger once: ``level`` (the caller passes ``Settings.log_level``, from ``LOG_LEVEL``) if
    given, else DEBUG with ``verbose``, else INFO."""
    level_name = (level or ("DEBUG" if verbose else "INFO")).upper()
    logging.basicConfig(level=getattr(logging, level_name, logging.INFO), format=_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    quiet_tensorflow()
    # MLflow's own variable: its download progress bars (for artifacts of a few kB) are noise in a log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Third-party chatter drowns the stage's own progress lines.
    for noisy in ("botocore", "boto3", "s3transfer", "alembic", "mlflow.store", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns once per retry of a bounded MLflow call ("Retrying (Retry(total=1...") before the command says,
    # in one line, that the server is unreachable.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


# Native libraries write start-up notices straight to file descriptor 2, below Python's logging. TF_CPP_MIN_LOG_LEVEL
# hides TensorFlow's later INFO/WARNING lines, but in TF 2.21 the oneDNN notice and absl's "before InitializeLog"
# warning are printed while TensorFlow is imported whatever it says, and LiteRT announces its XNNPACK delegate once
# per process. These exact lines are dropped; anything else written meanwhile is passed on unchanged.
NATIVE_NOTICES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} .* port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} .* cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)


@contextlib.contextmanager
def native_notices_dropped() -> Iterator[None]:
    """Capture file descriptor 2 for the block, then write back every line but the :data:`NATIVE_NOTICES`."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not any(p.search(line.rstrip("\n")) for p in NATIVE_NOTICES)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` (once, whenever some module first does) with its start-up notices dropped."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with native_notices_dropped():
            self.inner.exec_module(module)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up notices in this process: its log level for later lines (its own variable,
    read when it loads) and the import-time lines (dropped by an import hook). A no-op once it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
