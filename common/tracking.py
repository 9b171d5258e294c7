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
