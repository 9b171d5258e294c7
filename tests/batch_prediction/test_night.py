"""The night's pure parts (batch_prediction.night): the manifest of a new or continued run, what a rescore must not
send to people again, the lists people work from, and this invocation's tally."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pyarrow as pa

from batch_prediction.ledger import LedgerEntry
from batch_prediction.night import NightLists, NightOptions, Tally, already_routed, continued_manifest, new_manifest
from batch_prediction.outputs import RECORD_SCHEMA
from common.storage import ObjectInfo
from monitoring.audit import AuditPolicy, AuditSampler

MODEL = SimpleNamespace(name="ric", version="3")  # what a manifest takes of the model (inference ModelInfo)
NOW = datetime(2026, 12, 7, 0, 0, 3, 412_000, tzinfo=UTC)


def test_a_new_run_is_dated_by_its_start_and_a_continued_one_keeps_its_folder_and_adds_the_invocation():
    options = NightOptions(input_prefix="incoming/", rescore=False, rescore_scope="incoming/x/", engine="ray")
    manifest = new_manifest(options, MODEL, NOW)
    assert manifest.run_id.startswith("20261207T000003412Z-")
    assert manifest.output_prefix == f"predictions/2026-12-07/{manifest.run_id}"
    assert (manifest.model_name, manifest.model_version, manifest.engine) == ("ric", "3", "ray")
    assert manifest.rescore_scope == ""  # a scope without --rescore means nothing
    assert manifest.invocations == [NOW.isoformat()]

    later = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    again = continued_manifest(manifest, NightOptions(rescore=True, rescore_scope="incoming/y/"), later)
    assert (again.run_id, again.output_prefix, again.date) == (manifest.run_id, manifest.output_prefix, "2026-12-07")
    assert again.rescore and again.rescore_scope == "incoming/y/"
    assert again.invocations == [NOW.isoformat(), later.isoformat()]
    # A run started as a rescore keeps its own scope whatever a later invocation asks
    assert continued_manifest(again, NightOptions(rescore=True, rescore_scope="other/"), later).rescore_scope == (
        "incoming/y/"
    )


def test_a_rescore_does_not_send_again_what_a_person_already_saw():
    before = {
        "in/seen.png": LedgerEntry("s", 10, None, "scored"),
        "in/replaced.png": LedgerEntry("s", 10, None, "scored", fingerprint="old"),
        "in/broken.png": LedgerEntry("s", 10, None, "failed"),
        "out/seen.png": LedgerEntry("s", 10, None, "scored"),
    }
    listing = [
        ObjectInfo("in/seen.png", 10),
        ObjectInfo("in/replaced.png", 10, fingerprint="new"),
        ObjectInfo("in/broken.png", 10),
        ObjectInfo("in/new.png", 10),
        ObjectInfo("out/seen.png", 10),
    ]
    assert already_routed(listing, before, lambda key: key.startswith("in/")) == {"in/seen.png"}


def _records(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def test_night_lists_leave_routed_keys_out_of_review_and_audit_and_count_scored_items_per_part():
    lists = NightLists({"k/routed-doubtful", "k/routed-sure"}, AuditSampler(AuditPolicy(1.0, 0, 100), seed="run"))
    lists.add(
        0,
        _records(
            [
                {"key": "k/doubtful", "status": "scored", "class_id": 1, "confidence": 0.4, "needs_review": True},
                {
                    "key": "k/routed-doubtful",
                    "status": "scored",
                    "class_id": 1,
                    "confidence": 0.4,
                    "needs_review": True,
                },
                {"key": "k/sure", "status": "scored", "class_id": 2, "confidence": 0.99, "needs_review": False},
            ]
        ),
    )
    lists.add(
        3,
        _records(
            [
                {"key": "k/routed-sure", "status": "scored", "class_id": 2, "confidence": 0.99, "needs_review": False},
                {"key": "k/bad", "status": "failed", "error_code": "invalid_image", "error": "not an image"},
            ]
        ),
    )
    tables = lists.tables()
    assert list(tables) == ["needs_review.csv", "audit.csv", "quarantine.csv"]
    assert tables["needs_review.csv"].column("key").to_pylist() == ["k/doubtful"]
    assert tables["audit.csv"].column("key").to_pylist() == ["k/sure"]
    assert tables["quarantine.csv"].to_pylist() == [
        {"key": "k/bad", "sha256": None, "size": None, "error_code": "invalid_image", "error": "not an image"}
    ]
    assert lists.scored_per_part == {0: 3, 3: 1}
    assert (lists.stats.scored, lists.stats.failed, lists.stats.audit_sample) == (4, 1, 1)


def test_the_tally_of_an_invocation_rounds_for_the_summary():
    tally = Tally(skipped=7, scored=90, failed=10, seconds=2.0)
    assert tally.processed == 100
    usage = tally.to_dict(wall_seconds=3.14159, resources={"peak_rss_mb": 512.345})
    assert usage == {
        "processed": 100,
        "scored": 90,
        "failed": 10,
        "scoring_seconds": 2.0,
        "throughput_items_per_s": 50.0,
        "wall_seconds": 3.142,
        "peak_rss_mb": 512.3,
    }
    assert Tally().to_dict(0.0, {})["throughput_items_per_s"] == 0.0
