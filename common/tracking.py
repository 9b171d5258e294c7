"""MLflow plumbing shared by every command: bounded HTTP calls, one-line messages for an unreachable store,
experiments with a description, and ending the runs a killed process left RUNNING."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.redact import redact

NOTE = "mlflow.note.content"  # the tag the MLflow UI shows (and edits) as a run's, experiment's description
# Who runs a run: the next process on the same host can tell a live owner from one that was killed.
OWNER_HOST, OWNER_PID, OWNER_STARTED = "ric.host", "ric.pid", "ric.process_started"

# MLflow's own variables (read on every call; an operator's explicit setting wins), and the values every command
# uses: MLflow's defaults retry a failed call 7 times with exponential back-off, each try waiting up to 120 s
# (`ric registry list` against a stopped server was still retrying after 120 s; 248 s of silence were seen from
# the API). Three tries about 1 and 2 s apart, each waiting at most 20 s, fail a dead server in seconds and
# still ride out a server restart.
BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

# A tracking server's words that mean "down or unreachable", and the statuses it answers with when overloaded.
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "ConnectionError",
    "timed out",
    "Name or service not known",
    "Failed to establish",
    "Temporary failure in name resolution",
    "RemoteDisconnected",
)
_UNAVAILABLE_STATUSES = ("429", "500", "502", "503", "504")


def bound_mlflow_calls() -> None:
    """Bound every MLflow HTTP call of this process (retries, back-off, timeout: :data:`BOUNDS`). Called by
    :func:`common.cli.read_settings`, so by every command, and by the API's app factory."""
    for name, value in BOUNDS.items():
        os.environ.setdefault(name, value)


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, the artifact folder beside the database (so cwd does not matter)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str, tracking_uri: str, description: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of experiment ``name``, creating it if needed; a
    ``description`` is set when the experiment has none (one a person wrote in the UI is kept)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        tags = {NOTE: description} if description else None
        return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri), tags=tags)
    if description and not (exp.tags or {}).get(NOTE):
        client.set_experiment_tag(exp.experiment_id, NOTE, description)
    return exp.experiment_id


def is_unreachable(exc: BaseException) -> bool:
    """Does ``exc`` say the tracking server is down, unreachable or overloaded (rather than "no such model")?"""
    return unreachable_reason(exc) is not None


def unreachable_reason(exc: BaseException) -> str | None:
    """How the tracking server failed, for a message ("answered HTTP 503", "is unreachable (connection refused)"),
    or None when ``exc`` is about something else."""
    text = " ".join(str(exc).split())
    for code in _UNAVAILABLE_STATUSES:
        if any(f in text for f in (f"{code} ", f"'{code}'", f"status code {code}", f"HTTP {code}", f"{code} error")):
            return f"answered HTTP {code}"
    if "Connection refused" in text:
        return "is unreachable (connection refused)"
    if "timed out" in text:
        return "is unreachable (no answer in time)"
    if any(m in text for m in _UNREACHABLE):
        return "is unreachable"
    return None


def tracking_error_message(exc: BaseException, tracking_uri: str) -> str:
    """One line for an MLflow failure: an unreachable server with what to check, else MLflow's own message."""
    reason = unreachable_reason(exc)
    where = redact(tracking_uri)
    if reason is not None:
        return (
            f"the MLflow tracking server at {where} {reason}; check MLFLOW_TRACKING_URI (or --tracking-uri) and "
            "that the server is running"
        )
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__} from {where}: {' '.join(redact(str(message)).split())[:300]}"


def version_url(ui_url: str, name: str, version: str) -> str:
    """The page of a registered version in the MLflow UI at ``ui_url`` (its hash routes)."""
    from urllib.parse import quote

    return f"{ui_url.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


# --- runs a killed process left RUNNING ------------------------------------------------------------------------


def owner_tags() -> dict[str, str]:
    """Tags naming this process as a run's owner (host, pid and the pid's start time, so a reused pid is not taken
    for the owner)."""
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()), OWNER_STARTED: _started(os.getpid())}


def _started(pid: int) -> str:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def owner_is_gone(tags: dict[str, str]) -> bool:
    """True when the run's owner ran on this host and that process no longer exists (killed, or the host rebooted).
    A run of another host, or one without owner tags, is never judged: False."""
    if tags.get(OWNER_HOST) != socket.gethostname() or not tags.get(OWNER_PID, "").isdigit():
        return False
    return _started(int(tags[OWNER_PID])) != tags.get(OWNER_STARTED, "")


def end_orphaned_runs(
    client: Any, experiment_ids: Iterable[str], *, is_orphan: Callable[[Any], bool], ended_by: str
) -> list[str]:
    """End as KILLED every RUNNING run of the experiments that ``is_orphan(run)`` says nobody will finish; tag each
    with ``ended_by`` (why, and by whom). Returns their ids."""
    ended = []
    running = client.search_runs(list(experiment_ids), filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        if is_orphan(run):
            client.set_tag(run.info.run_id, "ended_by", ended_by)
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended
