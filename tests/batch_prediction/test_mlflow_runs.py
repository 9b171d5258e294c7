"""A night's MLflow run is never left RUNNING (issue 14, item 6): a night killed between creating its MLflow run
and recording it in its manifest is resumed by the next invocation, and RUNNING runs of nights that will never be
continued are ended KILLED."""

from __future__ import annotations

import signal

import pytest
from mlflow import MlflowClient

from batch_prediction.batch_predict import main
from batch_prediction.ledger import Ledger
from common.storage import storage_from_settings
from common.tracking import ensure_experiment
from tests.support.batch import assert_exactly_once, run_job, seed_incoming

pytestmark = pytest.mark.slow


def _runs(settings):
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("batch-predictions")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_killed_before_the_manifest_records_the_mlflow_run_the_next_night_resumes_it(night_env, monkeypatch):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 20)
    real_write = Ledger.write_manifest

    def killed_on_recording_the_mlflow_run(self, manifest):
        if manifest.mlflow_run_id:  # the MLflow run exists; the process dies before the manifest names it
            raise KeyboardInterrupt("simulated kill")
        real_write(self, manifest)

    monkeypatch.setattr(Ledger, "write_manifest", killed_on_recording_the_mlflow_run)
    with pytest.raises(KeyboardInterrupt):
        main(["--workers", "0"])
    monkeypatch.setattr(Ledger, "write_manifest", real_write)

    assert main(["--workers", "0"]) == 0
    _, runs = _runs(settings)
    assert [r.info.status for r in runs] == ["FINISHED"], "one MLflow run for the night, none left RUNNING"
    assert runs[0].data.tags["resumed"] == "true" and runs[0].data.metrics["images_scored"] == 20
    assert_exactly_once(storage, good, version)


def test_sigkill_right_after_creating_the_mlflow_run_then_rerun(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 10)
    proc = run_job("--workers", "0", kill_at="after_mlflow_run:1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert main(["--workers", "0"]) == 0
    _, runs = _runs(settings)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert_exactly_once(storage, good, version)


def test_a_night_left_running_by_an_abandoned_run_is_ended_killed(night_env):
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 5)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp_id = ensure_experiment("batch-predictions", settings.mlflow_tracking_uri)
    # What a SIGKILLed night of an earlier champion leaves: its ledger is never continued, its run stays RUNNING.
    orphan = client.create_run(exp_id, tags={"batch.run_id": "20261101T000000000Z-old"}).info.run_id
    assert main(["--workers", "0"]) == 0
    client, runs = _runs(settings)
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[orphan] == "KILLED"
    assert sorted(status.values()) == ["FINISHED", "KILLED"]
