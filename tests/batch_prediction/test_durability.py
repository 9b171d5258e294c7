"""Durability of the night's commit points (issue 14, item 6): every file the night writes on a local store is
fsynced before its rename, and its folder after it, so a power cut cannot leave a committed part empty."""

from __future__ import annotations

import os

import pytest

from batch_prediction.batch_predict import main
from common.storage import storage_from_settings
from tests.support.batch import run_prefixes, seed_incoming

pytestmark = pytest.mark.slow


class SyncLog:
    """Records os.fsync (by the path of the descriptor) and os.replace, in order, then does them for real."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._fsync, self._replace = os.fsync, os.replace

    def fsync(self, fd: int) -> None:
        self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        self._fsync(fd)

    def replace(self, src, dst, *args, **kwargs) -> None:
        self.events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        self._replace(src, dst, *args, **kwargs)


def _is_durable(events: list[tuple[str, str]], path: str) -> bool:
    """``path`` was renamed into place after its temp file was fsynced, and its folder was fsynced after that."""
    for i, (kind, what) in enumerate(events):
        if kind == "replace" and what.endswith(f" -> {path}"):
            tmp = what.split(" -> ")[0]
            data_synced = ("fsync", tmp) in events[:i]
            folder_synced = ("fsync", os.path.dirname(path)) in events[i + 1 :]
            return data_synced and folder_synced
    return False


def test_every_commit_point_is_fsynced_with_its_folder(night_env, monkeypatch):
    settings, _ = night_env
    storage = storage_from_settings(settings)
    seed_incoming(storage, 40, corrupt=2)
    sync = SyncLog()
    monkeypatch.setattr(os, "fsync", sync.fsync)
    monkeypatch.setattr(os, "replace", sync.replace)
    assert main(["--workers", "0", "--batch-size", "16"]) == 0

    [prefix] = run_prefixes(storage)
    run = storage.local_path(prefix)
    [ledger_run] = {p.parent for p in storage.local_path("ledger").rglob("_RUN.json")}
    commit_points = [
        *sorted(run.glob("parquet/part-*.parquet")),
        *sorted(ledger_run.glob("part-*.parquet")),
        ledger_run / "_RUN.json",
        run / "_SUCCESS",
        ledger_run / "_DONE",
    ]
    side_files = [*sorted(run.glob("_drift/part-*")), *sorted(run.glob("csv/part-*")), run / "summary.json"]
    assert len(commit_points) == 3 + 3 + 3 and len(side_files) == 3 + 3 + 1
    not_durable = [str(p) for p in commit_points + side_files if not _is_durable(sync.events, str(p))]
    assert not not_durable, f"written without fsync of file and folder: {not_durable}"
    # New folders are themselves entries of their parents: flushed too.
    assert ("fsync", str(run)) in sync.events and ("fsync", str(run.parent)) in sync.events
