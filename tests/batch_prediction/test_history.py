"""The night's memory across champions and working folders (issue 28): a promotion does not score the history again,
a rescore names what it scores and never sends an item back to the review queue, and one job runs per store
whatever folder it is started from."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess

import pytest
from mlflow import MlflowClient

from batch_prediction.batch_predict import main
from batch_prediction.lock import store_lock
from common.images import encode_png
from common.storage import storage_from_settings
from tests.support.batch import DATE, job_command, run_prefixes, seed_incoming, union_records
from tests.support.models import make_tiny_images

pytestmark = pytest.mark.slow
NAME = "refund-item-classifier"


def _summary(storage) -> dict:
    return json.loads(storage.get_bytes(f"{run_prefixes(storage)[-1]}/summary.json"))


def _review_keys(storage) -> set[str]:
    data = storage.get_bytes(f"{run_prefixes(storage)[-1]}/needs_review.csv").decode()
    return {row["key"] for row in csv.DictReader(io.StringIO(data))}


def _promote_a_new_version(tracking_uri: str, champion: str) -> str:
    """Register another version (the same run's model: no training needed) and make it the champion."""
    client = MlflowClient(tracking_uri=tracking_uri)
    current = client.get_model_version(NAME, champion)
    new = client.create_model_version(NAME, current.source, run_id=current.run_id)
    client.set_registered_model_alias(NAME, "champion", new.version)
    return str(new.version)


def _seed_night(storage, date: str, n: int, seed: int) -> list[str]:
    images, _ = make_tiny_images(n, seed=seed)
    keys = [f"incoming/{date}/ret-{seed}-{i:03d}.png" for i in range(n)]
    for key, img in zip(keys, images, strict=True):
        storage.put_bytes(key, encode_png(img))
    return keys


def test_a_promotion_scores_only_what_no_version_has_scored(night_env):
    settings, v1 = night_env
    storage = storage_from_settings(settings)
    first, _ = seed_incoming(storage, 30)
    review_all = ["--workers", "0", "--review-threshold", "1.0"]  # every scored item goes to the review queue
    assert main(review_all) == 0
    v2 = _promote_a_new_version(settings.mlflow_tracking_uri, v1)
    new = _seed_night(storage, "2026-11-27", 5, seed=9)

    assert main(review_all) == 0  # v2 scored all 35 inputs and listed the 30 already-routed ones for review again
    summary = _summary(storage)
    assert summary["model"]["version"] == v2
    assert (summary["scored"], summary["skipped_already_scored"]) == (5, 30)
    assert _review_keys(storage) == set(new)
    assert {r["key"] for r in union_records(storage, v2)} == set(new)
    assert {r["key"] for r in union_records(storage, v1)} == set(first)


def test_a_rescore_scores_what_it_names_and_sends_nothing_back_to_review(night_env):
    settings, v1 = night_env
    storage = storage_from_settings(settings)
    old, _ = seed_incoming(storage, 12)  # the night of DATE
    later = _seed_night(storage, "2026-11-27", 6, seed=3)
    args = ["--workers", "0", "--review-threshold", "1.0"]
    assert main(args) == 0
    v2 = _promote_a_new_version(settings.mlflow_tracking_uri, v1)
    fresh = _seed_night(storage, "2026-11-28", 4, seed=4)

    assert main([*args, "--rescore", f"{DATE}..{DATE}"]) == 0  # one night again, and what is new
    summary = _summary(storage)
    assert summary["rescore_scope"] == f"{DATE}..{DATE}"
    assert (summary["scored"], summary["skipped_already_scored"]) == (12 + 4, 6)
    assert {r["key"] for r in union_records(storage, v2)} == set(old + fresh)
    assert _review_keys(storage) == set(fresh)  # the rescored items were routed already

    assert main([*args, "--rescore", "incoming/2026-11-27/"]) == 0  # a key prefix
    assert (_summary(storage)["scored"], _review_keys(storage)) == (6, set())
    assert {r["key"] for r in union_records(storage, v2)} == set(old + fresh + later)
    assert main(["--rescore", "2026-11-01..yesterday"]) == 2  # a malformed range is a usage error


def test_one_lock_per_store_whatever_folder_the_job_starts_from(night_env, tmp_path):
    # DATA_DIR is relative by default: two jobs on one store from two folders both ran, scoring 2,048 keys twice.
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 5)
    store = settings.storage_uri
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}  # each folder's own data/
    env["STORAGE_URI"] = store
    holder = store_lock(store)  # the night a job from another folder is running
    holder.acquire()
    try:
        for folder in ("a", "b"):
            work = tmp_path / folder
            work.mkdir()
            (work / "store").symlink_to(store)  # the same store, named by another path
            proc = subprocess.run(
                job_command("--workers", "0", "--storage-uri", "store"),
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 75, proc.stderr[-2000:]
            assert "another batch run holds" in proc.stderr
    finally:
        holder.release()
    proc = subprocess.run(
        job_command("--workers", "0"), env=env, cwd=tmp_path / "b", capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _summary(storage)["scored"] == 5
