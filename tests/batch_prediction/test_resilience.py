"""The job as cron runs it, in its own process: SIGKILL at every commit point, overlapping launches, the
printed crontab line under ``env -i``."""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import time

import pytest
from filelock import FileLock
from mlflow import MlflowClient

from batch_prediction.batch_predict import main
from common.settings import PROJECT_ROOT
from common.storage import storage_from_settings
from tests.support.batch import (
    assert_exactly_once,
    assert_no_partial_files,
    job_command,
    run_job,
    run_prefixes,
    seed_incoming,
    union_records,
)

pytestmark = pytest.mark.slow


def _assert_no_duplicates(storage) -> int:
    keys = [r["key"] for r in union_records(storage)]
    assert len(keys) == len(set(keys)), "an input was scored twice"
    return len(keys)


def test_sigkill_at_each_commit_point_then_rerun_loses_nothing_and_scores_nothing_twice(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 150, corrupt=4)
    args = ["--batch-size", "16", "--workers", "0"]
    # Each invocation continues the run the previous one left unfinished, and is killed at the next point (the
    # crash driver makes the job's process SIGKILL itself there): manifest written but no MLflow run / side files
    # written but no Parquet part / Parquet part but no ledger part / a batch fully committed (ledger part #1 is the
    # one the start of that invocation rebuilt) / summary written but no _SUCCESS / _SUCCESS but no _DONE.
    committed_before = 0
    kills = ("after_manifest:1", "before_part:2", "after_part:3", "after_ledger:2", "before_success:1", "before_done:1")
    for fault in kills:
        proc = run_job(*args, kill_at=fault)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: {proc.returncode}\n{proc.stderr[-2000:]}"
        assert f"crash driver: SIGKILL at {fault.replace(':', ' #')}" in proc.stderr
        committed = _assert_no_duplicates(storage)
        assert committed >= committed_before
        committed_before = committed
        if fault.startswith("before_part"):  # and writes in flight when the kill landed left their temp files
            [prefix] = run_prefixes(storage)
            (storage.local_path(prefix) / "csv" / ".tmp-0123abcd-part-00099.csv").write_bytes(b"key,half a ro")
            [ledger_run] = {p.parent for p in storage.local_path("ledger").rglob("_RUN.json")}
            (ledger_run / ".tmp-4567cdef-part-00099.parquet").write_bytes(b"PAR1half")
    assert committed_before == len(good + bad), "the run reached finalize before the last two kills"

    assert main(args) == 0
    assert_exactly_once(storage, good + bad, version)
    [prefix] = run_prefixes(storage)  # every invocation continued the same run
    summary = json.loads(storage.get_bytes(f"{prefix}/summary.json"))
    assert summary["resumed"] and len(summary["invocations"]) == len(kills) + 1
    assert (summary["scored"], summary["failed"]) == (150, 4)
    assert storage.exists(f"{prefix}/_SUCCESS")
    assert_no_partial_files(storage.local_path(""))
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("batch-predictions")
    [run] = client.search_runs([exp.experiment_id])  # the night stays one MLflow run
    assert run.info.status == "FINISHED" and run.data.metrics["images_scored"] == 150

    assert main(args) == 0  # and now there is nothing left to do: nothing is written
    assert run_prefixes(storage) == [prefix]


def test_external_sigkill_at_a_random_moment_then_rerun(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    # Enough inputs that a fast machine cannot finish between two polls; the kill lands after a random number of
    # committed parts (not a random sleep, which a quiet machine could outlast by finishing the whole night).
    good, _ = seed_incoming(storage, 1200)
    root = storage.local_path("")
    kill_after_parts = random.randint(1, 20)
    proc = subprocess.Popen(
        job_command("--batch-size", "4", "--workers", "0"),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and len(list(root.glob("predictions/*/*/parquet/part-*.parquet"))) < kill_after_parts:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    partial = _assert_no_duplicates(storage)
    assert 0 < partial < len(good)

    assert main(["--batch-size", "64", "--workers", "0"]) == 0
    assert_exactly_once(storage, good, version)
    assert_no_partial_files(root)


def test_a_second_launch_exits_75_at_once_while_the_first_runs(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 60)
    first = subprocess.Popen(
        job_command("--workers", "0"),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while "lock acquired" not in line:  # the first run holds the lock before it even loads TensorFlow
            line = first.stderr.readline()
            assert line or first.poll() is None, "first run ended without taking the lock"
        second = run_job("--workers", "0", timeout=60)
        first_still_running = first.poll() is None
        assert second.returncode == 75, second.stderr[-2000:]
        assert "holds" in second.stderr and "Traceback" not in second.stderr
        assert "tensorflow" not in second.stderr.lower()  # it exited before importing anything heavy
    finally:
        first.stderr.read()
        first.wait()
    assert first_still_running
    assert first.returncode == 0
    assert_exactly_once(storage, good, version)

    # The lock is a plain file lock in the store: any holder blocks the job (and a SIGKILLed holder releases it).
    from batch_prediction.lock import lock_path

    with FileLock(str(lock_path(settings.storage_uri))):
        assert main(["--workers", "0"]) == 75


def test_printed_crontab_line_runs_under_env_i_from_another_directory(night_env, tmp_path, capsys):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 30)
    assert main(["--print-crontab", "--schedule", "15 2 * * *", "--batch-size", "16"]) == 0
    line = capsys.readouterr().out.strip()
    schedule, command = line.split(" ", 5)[:5], line.split(" ", 5)[5]
    assert schedule == ["15", "2", "*", "*", "*"]
    assert "--print-crontab" not in command and "--batch-size 16" in command
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # What cron does: an empty environment, /bin/sh, cwd = the user's home; \% turned back into %.
    proc = subprocess.run(
        ["env", "-i", "/bin/sh", "-c", command.replace("\\%", "%")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_file = settings.data_dir / "logs" / "batch_predict.log"
    log = log_file.read_text()
    assert "done: 30 scored" in log, log[-3000:]
    assert_exactly_once(storage, good, version)
    assert shlex.split(command)[shlex.split(command).index("cd") + 1] == str(PROJECT_ROOT)
