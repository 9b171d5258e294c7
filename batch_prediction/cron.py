"""The crontab line for the nightly job: works under cron's minimal environment (no PATH, no venv, cwd=$HOME).

Everything the job needs is spelled out: the virtualenv's Python by absolute path (NOT symlink-resolved:
``.venv/bin/python`` is a symlink to the base interpreter, and resolving it would leave the virtualenv),
``cd`` into the project, the store / MLflow / data settings as currently configured (absolute), and the log
file (appended). The job's own file lock keeps two invocations from overlapping.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from common.settings import PROJECT_ROOT, Settings

DEFAULT_SCHEDULE = "0 0 * * *"  # midnight, in the cron daemon's time zone


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db``; other URIs unchanged."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
    return uri


def absolute_storage_uri(uri: str) -> str:
    return uri if "://" in uri and not uri.startswith("file://") else str(Path(uri.removeprefix("file://")).resolve())


def cron_environment(settings: Settings) -> dict[str, str]:
    env = {
        "DATA_DIR": str(Path(settings.data_dir).resolve()),
        "STORAGE_URI": absolute_storage_uri(settings.storage_uri),
        "MLFLOW_TRACKING_URI": absolute_tracking_uri(settings.mlflow_tracking_uri),
        "MODEL_URI": settings.model_uri,
    }
    if settings.review_threshold is not None:  # unset: the champion's own threshold, as in an interactive run
        env["REVIEW_THRESHOLD"] = str(settings.review_threshold)
    if settings.aws_endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
    return env


def crontab_line(
    settings: Settings,
    *,
    schedule: str = DEFAULT_SCHEDULE,
    log_file: str | os.PathLike[str] | None = None,
    job_args: Sequence[str] = (),
    python: str | None = None,
    project: Path = PROJECT_ROOT,
) -> str:
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"a cron schedule has 5 fields, got {schedule!r}")
    python = python or os.path.abspath(sys.executable)
    log_path = Path(log_file) if log_file else Path(settings.data_dir) / "logs" / "batch_predict.log"
    log_path = log_path.resolve()
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cron_environment(settings).items())
    cmd = " ".join(shlex.quote(a) for a in [python, "-m", "batch_prediction.batch_predict", *job_args])
    command = (
        f"cd {shlex.quote(str(project))} && mkdir -p {shlex.quote(str(log_path.parent))} && "
        f"{env} {cmd} >> {shlex.quote(str(log_path))} 2>&1"
    )
    # cron turns an unescaped % into a newline.
    return f"{' '.join(fields)} {command.replace('%', chr(92) + '%')}"


def strip_cron_args(argv: Sequence[str]) -> list[str]:
    """The job's own flags from a ``--print-crontab`` command line (the cron-only flags removed)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name == "--print-crontab":
            continue
        if name in ("--schedule", "--log-file"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
