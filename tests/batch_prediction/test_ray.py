"""``--engine ray`` on a local Ray gives the same records as the default engine on the same inputs.

Deselect with ``-m "not ray"`` (it starts a local Ray and a model actor; it runs in ``make test``).
"""

from __future__ import annotations

import json

import pytest

from batch_prediction.batch_predict import main
from batch_prediction.outputs import committed_parts, parquet_to_table
from common.storage import storage_from_settings
from tests.support.batch import run_prefixes, seed_incoming

pytest.importorskip("ray.data", reason="Ray is optional: pip install -r requirements-ray.txt")
pytestmark = [pytest.mark.slow, pytest.mark.ray]

_SAME = ("sha256", "size", "status", "class_id", "class_name", "needs_review", "error_code", "model_version")


def _records(storage, prefix: str) -> dict[str, dict]:
    rows = [
        r for k in committed_parts(storage, prefix).values() for r in parquet_to_table(storage.get_bytes(k)).to_pylist()
    ]
    return {r["key"]: r for r in rows}


def test_ray_engine_matches_the_local_engine(night_env, monkeypatch):
    settings, version = night_env
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = storage_from_settings(settings)
    good, bad = seed_incoming(storage, 90, corrupt=3)

    # The same runtime on both engines (each would otherwise time the runtimes on its own and may pick another).
    same = ["--runtime", "litert-int8", "--batch-size", "32"]
    assert main([*same, "--workers", "0"]) == 0
    assert main(["--engine", "ray", "--ray-num-cpus", "1", *same, "--rescore"]) == 0

    local_prefix, ray_prefix = run_prefixes(storage)[:2]
    if json.loads(storage.get_bytes(f"{local_prefix}/summary.json"))["engine"] == "ray":
        local_prefix, ray_prefix = ray_prefix, local_prefix
    ray_summary = json.loads(storage.get_bytes(f"{ray_prefix}/summary.json"))
    assert ray_summary["engine"] == "ray" and (ray_summary["scored"], ray_summary["failed"]) == (90, 3)
    assert storage.exists(f"{ray_prefix}/_SUCCESS") and storage.exists(f"{ray_prefix}/needs_review.csv")

    local, ray = _records(storage, local_prefix), _records(storage, ray_prefix)
    assert sorted(local) == sorted(ray) == sorted(good + bad)
    assert {r["model_version"] for r in ray.values()} == {version}
    for key, row in local.items():
        other = ray[key]
        assert {c: row[c] for c in _SAME} == {c: other[c] for c in _SAME}, key
        if row["status"] == "scored":
            assert other["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
            assert [t["class_id"] for t in json.loads(other["top3"])] == [
                t["class_id"] for t in json.loads(row["top3"])
            ]
    # The Ray run wrote its own ledger: a plain rerun on Ray has nothing new and writes nothing.
    before = run_prefixes(storage)
    assert main(["--engine", "ray", "--ray-num-cpus", "1"]) == 0
    assert run_prefixes(storage) == before
