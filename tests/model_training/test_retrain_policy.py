"""When to retrain (model_training.retrain_policy): the decisions, and the command as cron runs it."""

from __future__ import annotations

import subprocess

import pytest

from common.images import encode_png
from common.storage import sha256_hex, storage_from_settings
from model_training.retrain_policy import EXIT_DUE, EXIT_LOCKED, EXIT_OK, Evidence, decide, main
from monitoring.label_store import ItemChecker, LabelStore
from tests.support.models import make_tiny_images


def _evidence(**kw) -> Evidence:
    base = {"champion": "3", "new_labels": 0, "labels_as_of": None, "latest_status": "ok", "drift_nights": []}
    return Evidence(**{**base, **kw})


def test_decisions_name_their_reasons_and_numbers() -> None:
    quiet = decide(_evidence(new_labels=120, drift_nights=[True, False, True]), min_labels=500, drift_nights=3)
    assert not quiet.retrain and "120 new label(s) since version 3's data (need 500)" in quiet.line()
    labels = decide(_evidence(new_labels=500), min_labels=500, drift_nights=3)
    assert labels.retrain and labels.reasons == ["500 new label(s) since version 3's data (need 500)"]
    degraded = decide(_evidence(latest_status="degraded", latest_reason="night x: below"), min_labels=500,
                      drift_nights=3)  # fmt: skip
    assert degraded.retrain and degraded.reasons == ["measured accuracy degraded: night x: below"]
    drift = decide(_evidence(drift_nights=[False, True, True, True]), min_labels=500, drift_nights=3)
    assert drift.retrain and "drift on 3 of the last 3 night(s)" in drift.reasons[0]
    short = decide(_evidence(drift_nights=[True, True]), min_labels=500, drift_nights=3)
    assert not short.retrain  # two nights are not three in a row


def _seed_labels(storage, n: int) -> None:
    images, classes = make_tiny_images(n, seed=8)
    rows = []
    for i, (img, c) in enumerate(zip(images, classes, strict=True)):
        data = encode_png(img)
        key = f"incoming/2026-12-02/ret-{i:04d}.png"
        storage.put_bytes(key, data)
        rows.append({"key": key, "sha256": sha256_hex(data), "label": int(c)})
    LabelStore(storage).submit(rows, who="ann", how="csv", checker=ItemChecker(storage))


@pytest.mark.slow
def test_the_policy_command_dry_run_lock_and_cron_line(night_env, monkeypatch, tmp_path, capsys) -> None:
    settings, version = night_env
    storage = storage_from_settings(settings)
    monkeypatch.setenv("RETRAIN_MIN_LABELS", "30")
    _seed_labels(storage, 20)
    assert main(["--dry-run"]) == EXIT_OK
    assert f"champion version {version}): no retraining needed (20 new label(s)" in capsys.readouterr().out

    _seed_labels(storage, 40)  # 40 other photos
    assert main(["--dry-run"]) == EXIT_DUE
    assert "retrain: 60 new label(s) since version" in capsys.readouterr().out

    from filelock import FileLock

    with FileLock(str(settings.data_dir / "retrain_policy.lock")):
        assert main(["--dry-run"]) == EXIT_LOCKED

    assert main(["--print-crontab", "--schedule", "45 6 * * *", "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("45 6 * * * ") and "-m model_training.retrain_policy --dry-run" in line
    command = line.split(" ", 5)[5].replace("\\%", "%")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(["env", "-i", "/bin/sh", "-c", command], cwd=elsewhere, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    # Under cron's empty environment the job still finds the store and the registry; RETRAIN_MIN_LABELS is not in
    # the cron line, so the default (500) applies: nothing is due.
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    log = (settings.data_dir / "logs" / "retrain_policy.log").read_text()
    assert "no retraining needed (60 new label(s)" in log and "(need 500)" in log
