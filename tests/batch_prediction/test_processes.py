"""The nightly job's processes (issue 14, item 3): loader processes never outlive the job, and the peak RSS it
reports is the real peak of every process, not a sample taken after each batch."""

from __future__ import annotations

import json
import signal
import time
import uuid

import psutil
import pytest

from batch_prediction.batch_predict import main
from common.storage import storage_from_settings
from tests.support.batch import DATE, run_job, run_prefixes, seed_incoming
from tests.support.decode import flat_png

pytestmark = pytest.mark.slow


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``RIC_TEST_TAG=tag`` (the job and whatever it started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RIC_TEST_TAG") == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_loader_processes_die_with_a_sigkilled_job(night_env):
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 40)
    tag = uuid.uuid4().hex
    # The job SIGKILLs itself after its first committed part, its two loader processes alive and idle.
    proc = run_job(
        "--workers", "2", "--batch-size", "8", env={"RIC_TEST_TAG": tag}, timeout=300, kill_at="after_part:1"
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    survivors = _tagged(tag)
    deadline = time.monotonic() + 30  # the kernel's parent-death signal is immediate; this only bounds the poll
    while survivors and time.monotonic() < deadline:
        time.sleep(0.2)
        survivors = _tagged(tag)
    for p in survivors:  # do not leave them to the next test, whatever the assertion says
        p.kill()
    assert not survivors, f"loader processes outlived the job: {[p.pid for p in survivors]}"


def test_reported_worker_peak_rss_is_the_real_peak(night_env):
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 8)
    assert main(["--workers", "1"]) == 0
    idle = json.loads(storage.get_bytes(f"{run_prefixes(storage)[-1]}/summary.json"))["this_invocation"]
    # A legal 16-bit 4096x4096 PNG costs its loader ~100 MB at peak, all of it freed before the batch ends.
    storage.put_bytes(f"incoming/{DATE}/ret-big.png", flat_png(4096, 4096, bit_depth=16, value=30000))
    assert main(["--workers", "1"]) == 0
    busy = json.loads(storage.get_bytes(f"{run_prefixes(storage)[-1]}/summary.json"))["this_invocation"]
    assert busy["scored"] == 1
    assert busy["peak_rss_workers_mb"] - idle["peak_rss_workers_mb"] > 60, (idle, busy)
    assert busy["peak_rss_mb"] > busy["peak_rss_workers_mb"] > 0  # the job itself holds the model
