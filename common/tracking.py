"""MLflow plumbing shared by training, the batch job and the drift evaluation."""

from __future__ import annotations

from pathlib import Path


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, the artifact folder beside the database (so cwd does not matter)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of experiment ``name``, creating it if needed."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri))


def bound_registry_calls(max_retries: int = 2, timeout_seconds: int = 10) -> None:
    """Keep an unreachable tracking server from stalling a caller for minutes.

    MLflow retries a failed HTTP call up to 7 times with exponential back-off, each try waiting up to 120 s (248 s
    of silence were seen against a registry that was down). A serving worker or the nightly job wants a quick, clear
    failure instead; these are MLflow's own variables, read on every call, and an operator's explicit setting wins.
    """
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
