"""The nightly job refuses what cannot be right (issue 29): a store or input prefix that does not exist is a usage
error in one line (a typo in a crontab line gave green empty nights forever), the store's own failures are one line
with what to check, and a night with nothing new loads no model and writes nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from batch_prediction import job
from batch_prediction.batch_predict import main
from common.cron import schedule_problems
from common.storage import storage_from_settings
from tests.support.batch import job_command, run_prefixes, seed_incoming

pytestmark = pytest.mark.slow


def _experiment_runs(settings) -> list:
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("batch-predictions")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_mistyped_store_or_input_prefix_is_a_usage_error_and_creating_one_is_explicit(night_env, tmp_path, capsys):
    settings, _ = night_env
    typo = tmp_path / "path" / "that" / "does-not-exist"
    assert main(["--storage-uri", str(typo), "--workers", "0"]) == 2  # was 0, night_status=ok, every night
    err = capsys.readouterr().err
    assert f"the store {typo} does not exist" in err and "--create-store" in err
    assert not typo.exists() and _experiment_runs(settings) == []  # nothing created, no MLflow run

    storage = storage_from_settings(settings)
    seed_incoming(storage, 4)
    assert main(["--input-prefix", "incomng/", "--workers", "0"]) == 2
    assert "the input prefix 'incomng/' does not exist" in capsys.readouterr().err
    assert run_prefixes(storage) == []

    # On purpose: the store and its input folder are created; there is nothing to score in them, so nothing else.
    assert main(["--storage-uri", str(typo), "--create-store", "--workers", "0"]) == 0
    assert (typo / "incoming").is_dir() and not (typo / "predictions").exists()
    assert _experiment_runs(settings) == []


def test_a_night_with_nothing_new_loads_no_model_and_writes_nothing(night_env, monkeypatch, caplog):
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 6)
    loads = []
    real_load = job.load_predictor
    monkeypatch.setattr(job, "load_predictor", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))

    assert main(["--workers", "0"]) == 0
    [prefix] = run_prefixes(storage)
    assert len(loads) == 1 and storage.get_bytes("predictions/LATEST").decode().strip() == prefix

    caplog.clear()
    caplog.set_level(logging.INFO, logger="batch_prediction")
    assert main(["--workers", "0"]) == 0
    assert len(loads) == 1, "the model was loaded for a night with nothing to score"  # it took ~8 s each night
    assert run_prefixes(storage) == [prefix] and len(_experiment_runs(settings)) == 1
    lines = [r.getMessage() for r in caplog.records if "nothing new" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "6 input(s) already scored" in lines[0] and prefix in lines[0]  # and where the last night with work is


def _no_credentials(tmp_path: Path, bucket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "STORAGE_URI": f"s3://{bucket}/store",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups: "no credentials" at once
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_storage_mistakes_are_one_line_with_a_hint_and_a_documented_exit_code(tmp_path, moto_server):
    bucket = f"nonexistent-{uuid.uuid4().hex[:8]}"
    env = _no_credentials(tmp_path, bucket)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.png").write_bytes(b"copied as it is")

    # simulate_night printed a 64-line botocore traceback (rc 1, undocumented); the job a 65-line one (rc 70), after
    # loading the model for 8 s, ending "the next run continues where this one stopped".
    def run(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)

    simulate = run(
        sys.executable, "-m", "batch_prediction.simulate_night", "--count", "1", "--source", str(photos), env=env
    )
    night = run(*job_command("--workers", "0"), env=env)
    for proc, code, prog in ((simulate, 1, "ric simulate-night"), (night, 4, "ric batch")):
        assert proc.returncode == code, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and " INFO " not in proc.stderr.strip().splitlines()[-1]
        [line] = [x for x in proc.stderr.splitlines() if " INFO " not in x]  # the job logs its lock, then this
        assert line.startswith(f"{prog}: error: no usable AWS credentials for s3://{bucket}/store"), line
        assert "AWS_PROFILE" in line

    # With credentials, against an endpoint: the missing bucket is named, with what to check.
    env = {**env, "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    night = run(*job_command("--workers", "0"), env=env)
    [line] = [x for x in night.stderr.splitlines() if "error:" in x]
    assert night.returncode == 2 and f"the bucket {bucket!r}" in line and "does not exist" in line, night.stderr


def test_cron_schedules_are_checked_before_they_reach_a_crontab(capsys):
    assert main(["--print-crontab", "--schedule", "61 * * * *"]) == 2  # was printed as an invalid cron line
    err = capsys.readouterr().err
    assert "not a valid cron schedule" in err and "minute '61': must be within 0-59" in err
    assert main(["--print-crontab", "--schedule", "*/15 2-4 * jan-mar mon-fri"]) == 0
    assert capsys.readouterr().out.startswith("*/15 2-4 * jan-mar mon-fri cd ")
    assert schedule_problems("@daily") == [] and schedule_problems("0 0 * *") != []
    assert schedule_problems("5-1 * * * *") == ["minute '5-1': the range '5-1' runs backwards"]
