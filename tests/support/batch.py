"""Helpers for the batch-prediction tests: seeding ``incoming/``, reading the union of outputs, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from batch_prediction.outputs import committed_parts, parquet_to_table
from common.images import encode_png
from common.settings import PROJECT_ROOT
from common.storage import Storage

DATE = "2026-11-26"


def seed_incoming(
    storage: Storage, n: int, *, corrupt: int = 0, seed: int = 0, prefix: str = "incoming", tag: str = "a"
) -> tuple[list[str], list[str]]:
    """``n`` generated PNG photos plus ``corrupt`` broken files under ``prefix/DATE/``; returns (good, bad) keys."""
    from tests.support.models import make_tiny_images

    images, _ = make_tiny_images(n, seed=seed)
    good = []
    for i, img in enumerate(images):
        key = f"{prefix}/{DATE}/ret-{tag}-{i:05d}.png"
        storage.put_bytes(key, encode_png(img))
        good.append(key)
    bad = []
    rng = np.random.default_rng(seed)
    for i in range(corrupt):
        key = f"{prefix}/{DATE}/ret-{tag}-broken-{i:03d}.png"
        kind = i % 3
        if kind == 0:
            data = b""  # empty upload
        elif kind == 1:
            data = encode_png(images[i % n])[:40]  # truncated PNG
        else:
            data = rng.bytes(200)  # random junk
        storage.put_bytes(key, data)
        bad.append(key)
    return good, bad


@contextmanager
def nested_folders(base: Path, depth: int) -> Iterator[Path]:
    """``depth`` folders named ``d``, each inside the last, under ``base``; yields the innermost and removes them
    all on exit. Made and removed one at a time: ``Path.mkdir(parents=True)`` and ``shutil.rmtree`` (pytest's
    clean-up) recurse, and fail as the code under test once did."""
    path = base
    path.mkdir(parents=True, exist_ok=True)
    for _ in range(depth):
        path = path / "d"
        path.mkdir()
    try:
        yield path
    finally:
        folders = [base / "d"]
        while True:
            for entry in os.scandir(folders[-1]):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
            nxt = folders[-1] / "d"
            if not nxt.is_dir():
                break
            folders.append(nxt)
        for folder in reversed(folders):
            os.rmdir(folder)


def run_prefixes(storage: Storage) -> list[str]:
    """Every run folder ``predictions/<date>/<run-id>`` in the store."""
    runs = set()
    for info in storage.list("predictions/"):
        parts = info.key.split("/")
        if len(parts) >= 4:
            runs.add("/".join(parts[:3]))
    return sorted(runs)


def union_records(storage: Storage, model_version: str | None = None) -> list[dict]:
    """All rows of all committed Parquet parts of all runs (optionally of one model version)."""
    rows: list[dict] = []
    for prefix in run_prefixes(storage):
        for key in committed_parts(storage, prefix).values():
            for row in parquet_to_table(storage.get_bytes(key)).to_pylist():
                if model_version is None or row["model_version"] == str(model_version):
                    rows.append(row)
    return rows


def assert_exactly_once(storage: Storage, expected_keys: list[str], model_version: str) -> list[dict]:
    rows = union_records(storage, model_version)
    counts = Counter(r["key"] for r in rows)
    dupes = {k: c for k, c in counts.items() if c > 1}
    assert not dupes, f"scored more than once: {list(dupes.items())[:5]}"
    missing = set(expected_keys) - set(counts)
    assert not missing, f"{len(missing)} input(s) lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == set(expected_keys)
    return rows


def assert_no_partial_files(root: Path) -> None:
    """No temporary or orphan files: every CSV / drift part has its committed Parquet part."""
    tmp = [p for p in root.rglob("*") if p.name.startswith(".tmp-")]
    assert not tmp, f"temporary files left: {tmp[:5]}"
    for run in (root / "predictions").glob("*/*"):
        parquet = {p.stem for p in (run / "parquet").glob("part-*.parquet")}
        for kind in ("csv", "_drift"):
            orphans = [p for p in (run / kind).glob("part-*") if p.stem not in parquet]
            assert not orphans, f"orphan side files in a finished run: {orphans}"


def job_command(*args: str, kill_at: str | None = None) -> list[str]:
    """The job's command line; ``kill_at="<point>:<n>"`` runs it under :mod:`tests.support.crash_driver`, which
    makes it SIGKILL itself the n-th time it reaches that point."""
    if kill_at is not None:
        return [sys.executable, "-m", "tests.support.crash_driver", kill_at, *args]
    return [sys.executable, "-m", "batch_prediction.batch_predict", *args]


def run_job(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, kill_at: str | None = None
) -> subprocess.CompletedProcess:
    """The job as its own process (what cron runs); the environment is the test's isolated one."""
    return subprocess.run(
        job_command(*args, kill_at=kill_at),
        env={**os.environ, **(env or {})},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
