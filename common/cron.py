"""Crontab lines for the scheduled jobs (the nightly batch, the retrain policy): they work under cron's minimal
environment (no PATH, no venv, cwd=$HOME).

The schedule is checked as cron reads it (:func:`schedule_problems`): five fields, each ``*``, a number, a range, a
step or a list of them within the field's bounds (months and weekdays also by name), or one of cron's ``@`` macros;
an invalid schedule is refused, never printed into a crontab.

Everything the job needs is spelled out: the virtualenv's Python by absolute path (NOT symlink-resolved:
``.venv/bin/python`` is a symlink to the base interpreter, and resolving it would leave the virtualenv),
``cd`` into the project, the store / MLflow / data settings as currently configured (absolute), and the log
file (appended). Each job's own file lock keeps two invocations from overlapping.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from common.settings import PROJECT_ROOT, Settings

DEFAULT_SCHEDULE = "0 0 * * *"  # midnight, in the cron daemon's time zone
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# (name, lowest, highest, names) of the five fields; weekday 7 is Sunday again.
FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def schedule_problems(schedule: str) -> list[str]:
    """What is wrong with a cron schedule, one message per field (empty: valid). Pure."""
    text = schedule.strip()
    if text.startswith("@"):
        return [] if text.lower() in MACROS else [f"unknown macro {text!r} (one of {', '.join(MACROS)})"]
    parts = text.split()
    if len(parts) != len(FIELDS):
        return [f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"]
    problems = []
    for value, (name, low, high, names) in zip(parts, FIELDS, strict=True):
        problem = _field_problem(value, low, high, names)
        if problem:
            problems.append(f"{name} {value!r}: {problem}")
    return problems


def _field_problem(value: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    def number(text: str) -> int | None:
        if text.lower() in names:
            return names.index(text.lower()) + (1 if low == 1 else 0)
        return int(text) if text.isdigit() else None

    for item in value.split(","):
        span, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return f"the step {step!r} must be a positive number"
        if span == "*":
            continue
        first, dash, last = span.partition("-")
        read = [number(first), *([number(last)] if dash else [])]
        bounds = [b for b in read if b is not None]
        if len(bounds) < len(read):
            return f"{span!r} is not a number{' or a name' if names else ''}"
        if any(not low <= b <= high for b in bounds):
            return f"must be within {low}-{high}"
        if bounds != sorted(bounds):
            return f"the range {span!r} runs backwards"
    return None


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
    if settings.unfamiliar_threshold is not None:  # likewise
        env["UNFAMILIAR_THRESHOLD"] = str(settings.unfamiliar_threshold)
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
    module: str = "batch_prediction.batch_predict",
) -> str:
    """The line that runs ``python -m <module> <job_args>`` on ``schedule``, appending to ``log_file`` (default
    ``<DATA_DIR>/logs/<last part of the module>.log``); ValueError for a schedule cron would not read."""
    problems = schedule_problems(schedule)
    if problems:
        raise ValueError(f"invalid cron schedule {schedule!r}: {'; '.join(problems)}")
    python = python or os.path.abspath(sys.executable)
    default_log = Path(settings.data_dir) / "logs" / f"{module.rsplit('.', 1)[-1]}.log"
    log_path = (Path(log_file) if log_file else default_log).resolve()
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cron_environment(settings).items())
    cmd = " ".join(shlex.quote(a) for a in [python, "-m", module, *job_args])
    command = (
        f"cd {shlex.quote(str(project))} && mkdir -p {shlex.quote(str(log_path.parent))} && "
        f"{env} {cmd} >> {shlex.quote(str(log_path))} 2>&1"
    )
    # cron turns an unescaped % into a newline.
    return f"{' '.join(schedule.split())} {command.replace('%', chr(92) + '%')}"


def strip_cron_args(argv: Sequence[str]) -> list[str]:
    """The job's own flags from a ``--print-crontab`` command line (the cron-only flags removed)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--print-crontab", "--create-store"):  # a cron line never creates a store: a typo must show
            continue
        if name in ("--schedule", "--log-file"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
