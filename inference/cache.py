"""The last model version a process loaded, kept on local disk, so a start with the registry unreachable can serve.

Layout under the cache root (one root per model URI, e.g. ``<DATA_DIR>/model-cache/<slug>/``)::

    current.json            {"info": ModelInfo, "dir": "v7"}: written last, atomically: what a cold start serves
    v7/runtime/...          the exported runtime as downloaded (runtime.json, model file, probe.npz), or
    v7/keras/...            the MLflow Keras model directory when the version serves through the Keras graph
    v7/extras/<name>        files the caller keeps with the version (the API keeps the drift reference here)

A version is written completely into its folder, every file and folder fsynced, before ``current.json`` points at
it (written durably too), so a crash or power cut mid-write leaves the previous version in place, never a pointer
to files that come back empty; older folders are pruned.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from common.storage import atomic_write, fsync_dir
from inference.versions import ModelInfo

log = logging.getLogger(__name__)

CURRENT = "current.json"


def cache_root(base: Path, model_uri: str) -> Path:
    """The cache folder of ``model_uri`` under ``base``."""
    return Path(base) / re.sub(r"[^A-Za-z0-9._-]+", "_", model_uri).strip("_")


def _staged_by_another_live_process(name: str) -> bool:
    """Whether ``name`` is the staging folder of another process that is still running (still copying: taking
    it away would fail that process's copy); a dead process's leftover staging is fair to prune."""
    match = re.fullmatch(r"\..*\.tmp-(\d+)", name)
    if match is None or int(match[1]) == os.getpid():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


class ModelCache:
    """One model URI's cached version (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def current(self) -> tuple[ModelInfo, Path] | None:
        """The cached version and its folder, or None when nothing (readable) is cached."""
        try:
            entry = json.loads((self.root / CURRENT).read_text())
            info = ModelInfo(**entry["info"])
            folder = self.root / entry["dir"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (info, folder) if folder.is_dir() else None

    def store(self, info: ModelInfo, model_dir: Path, kind: str, extras: dict[str, bytes] | None = None) -> Path:
        """Copy ``model_dir`` (``kind``: ``runtime`` or ``keras``) and ``extras`` into the version's folder, then
        make it current. Returns the folder."""
        if kind not in ("runtime", "keras"):
            raise ValueError(f"kind must be runtime or keras, got {kind!r}")
        name = f"v{re.sub(r'[^A-Za-z0-9._-]+', '_', info.version)}"
        folder = self.root / name
        staging = self.root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model_dir, staging / kind)
        for file, data in (extras or {}).items():
            atomic_write(staging / "extras" / file, data)
        _fsync_tree(staging)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process (the server's other worker, loading the same version) put its copy there first.
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.is_dir():
                raise
        fsync_dir(self.root)
        atomic_write(self.root / CURRENT, json.dumps({"info": asdict(info), "dir": name}).encode(), durable=True)
        for old in self.root.iterdir():
            if old.is_dir() and old.name != name and not _staged_by_another_live_process(old.name):
                shutil.rmtree(old, ignore_errors=True)
        log.info("cached %s v%s in %s", info.name, info.version, folder)
        return folder

    def put_extra(self, info: ModelInfo, name: str, data: bytes) -> bool:
        """Keep ``data`` as extra ``name`` of the cached version, if ``info`` is still the cached version."""
        current = self.current()
        if current is None or current[0] != info:
            return False
        atomic_write(current[1] / "extras" / name, data, durable=True)
        return True

    def extra(self, name: str) -> bytes | None:
        """Extra ``name`` of the cached version, or None."""
        current = self.current()
        if current is None:
            return None
        try:
            return (current[1] / "extras" / name).read_bytes()
        except OSError:
            return None


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (a model folder: a handful of files) to disk."""
    for folder, _, files in os.walk(root):
        for file in files:
            fd = os.open(os.path.join(folder, file), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)
