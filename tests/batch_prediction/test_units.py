"""Batch prediction, the pure parts: record format, ledger selection, statistics, crontab line, commit repair."""

from __future__ import annotations

import io
import shlex
import threading
import time

import numpy as np
import pytest
from moto import mock_aws

from batch_prediction.ledger import Ledger, LedgerEntry, RunManifest, RunState, select_todo
from batch_prediction.night import is_input_key
from batch_prediction.outputs import (
    Failure,
    Stamp,
    build_records,
    part_name,
    remove_orphans,
    table_to_parquet,
)
from batch_prediction.reading import LoadedBatch, load_batch
from batch_prediction.summary import NightStats, sample_indices
from common.cron import absolute_tracking_uri, crontab_line, strip_cron_args
from common.images import encode_png
from common.settings import Settings
from common.storage import LocalStorage, ObjectInfo, S3Storage
from inference.classifier import ColumnAnswer, Thresholds
from inference.predictor import Scores
from tests.support.inference import random_probs


def _build(keys, probs, failures=(), *, unfamiliarity=None, unfamiliar_threshold=None, version="1", run_id="r"):
    """build_records of scored ``keys`` (hashes "s", sizes 1) and ``failures``, as a night of model "m" writes them."""
    score = np.full(len(probs), np.nan) if unfamiliarity is None else np.asarray(unfamiliarity, dtype=np.float32)
    rows = LoadedBatch(keys=list(keys), shas=["s"] * len(keys), sizes=[1] * len(keys), failures=list(failures))
    answer = ColumnAnswer.of(Scores(probs, score), Thresholds(0.7, unfamiliar_threshold))
    return build_records(rows, answer, Stamp("m", version, run_id, "t"))


def test_build_records_one_row_per_input_with_failures_listed():
    probs = random_probs(3, seed=2)
    table = _build(["a", "b", "c"], probs, [Failure("d", "4", 5, "invalid_image", "not an image")], version="7")
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["status"] for r in rows] == ["scored"] * 3 + ["failed"]
    assert rows[3]["class_id"] is None and rows[3]["error_code"] == "invalid_image"
    assert all(r["model_version"] == "7" and r["run_id"] == "r" for r in rows)
    with pytest.raises(ValueError, match="shape"):
        _build(["a"], probs)


def test_select_todo_skips_unchanged_and_rescores_replaced_photos():
    done = {
        "in/a.png": LedgerEntry("s1", 100, None, "scored"),
        "in/b.png": LedgerEntry("s2", 100, "m-old", "scored"),
        "in/c.png": LedgerEntry("s3", 100, None, "failed"),
    }
    listing = [
        ObjectInfo("in/a.png", 100),  # same size, no md5 known: unchanged
        ObjectInfo("in/b.png", 100, "m-new"),  # same size but S3 says the content changed
        ObjectInfo("in/c.png", 100),  # quarantined before: not retried
        ObjectInfo("in/d.png", 50),  # new
        ObjectInfo("in/a2.png", 100),
    ]
    todo, skipped = select_todo(listing, done)
    assert [t.key for t in todo] == ["in/b.png", "in/d.png", "in/a2.png"]
    assert skipped == 2


def test_input_keys_exclude_folder_markers_only_and_what_is_not_read_is_screened_with_a_reason():
    from batch_prediction.reading import screen
    from common.storage import KIND_DEEP_FOLDER, ObjectInfo

    assert is_input_key("incoming/2026-11-26/x.png")
    assert not is_input_key("incoming/2026-11-26/")
    # Hidden and temporary files were skipped silently: neither scored, nor quarantined, nor reported.
    assert is_input_key("incoming/.DS_Store") and is_input_key("incoming/.tmp-0a1b-x.png")
    codes = {
        key: screen(ObjectInfo(key, 10, kind=kind), 1000)
        for key, kind in [
            ("in/.DS_Store", "file"),
            ("in/.tmp-0a1b-x.png", "file"),
            ("in/d/d/d", KIND_DEEP_FOLDER),
            ("in/x.png", "file"),
        ]
    }
    assert {k: f.code if f else None for k, f in codes.items()} == {
        "in/.DS_Store": "hidden_file",
        "in/.tmp-0a1b-x.png": "temporary_file",
        "in/d/d/d": "folder_too_deep",
        "in/x.png": None,
    }


def test_night_stats_counts_histograms_and_quantiles():
    probs = random_probs(400, seed=3)
    failures = [Failure(f"bad{i}", "", 1, "empty_image" if i else "invalid_image", "x") for i in range(3)]
    table = _build([f"k{i}" for i in range(400)], probs, failures)
    stats = NightStats()
    stats.add(table.slice(0, 200))
    stats.add(table.slice(200))
    d = stats.to_dict()
    conf = probs.max(axis=1).astype(np.float64)
    assert d["scored"] == 400 and d["failed"] == 3 and d["items"] == 403
    assert d["failures_by_reason"] == {"empty_image": 2, "invalid_image": 1}
    assert d["needs_review"] == int((conf < 0.7).sum())
    assert sum(d["confidence"]["histogram"]["counts"]) == 400
    assert sum(d["classes"].values()) == 400
    assert list(d["classes"].values()) == np.bincount(probs.argmax(axis=1), minlength=10).tolist()
    assert d["confidence"]["mean"] == pytest.approx(conf.mean(), abs=1e-6)
    for q in (0.05, 0.5, 0.95):
        assert d["confidence"]["quantiles"][f"p{round(q * 100):02d}"] == pytest.approx(np.quantile(conf, q), abs=0.01)


def test_sample_indices_is_uniform_bounded_and_reproducible():
    assert sample_indices(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]
    a = sample_indices(100_000, 1000, seed=7)
    assert len(a) == 1000 and len(set(a.tolist())) == 1000 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_indices(100_000, 1000, seed=7))
    assert 40_000 < np.median(a) < 60_000  # spread over the whole night, not the first items


def test_crontab_line_is_absolute_and_self_contained(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "d",
        storage_uri="s3://bucket/store",
        aws_endpoint_url="http://127.0.0.1:9000",
        mlflow_tracking_uri="sqlite:///rel/mlflow.db",
    )
    line = crontab_line(settings, job_args=["--batch-size", "512"], python="/opt/venv/bin/python")
    fields = line.split(" ", 5)
    assert fields[:5] == ["0", "0", "*", "*", "*"]
    words = shlex.split(fields[5])
    assert words[0] == "cd" and words[1].startswith("/")
    assert "STORAGE_URI=s3://bucket/store" in words
    assert "AWS_ENDPOINT_URL=http://127.0.0.1:9000" in words
    tracking = next(w for w in words if w.startswith("MLFLOW_TRACKING_URI="))
    assert tracking.startswith("MLFLOW_TRACKING_URI=sqlite:////"), "relative sqlite path made absolute"
    assert "/opt/venv/bin/python" in words and "--batch-size" in words and ">>" in words
    assert words[words.index(">>") + 1].endswith("batch_predict.log") and words[-1] == "2>&1"
    with pytest.raises(ValueError):
        crontab_line(settings, schedule="0 0 * *")
    percent = crontab_line(Settings(data_dir=tmp_path / "50%"), python="/p")
    assert "50\\%" in percent and "50%" not in percent.replace("50\\%", "")  # cron's % is escaped
    assert absolute_tracking_uri("http://x:5000") == "http://x:5000"


def test_strip_cron_args_keeps_job_flags_only():
    argv = ["--print-crontab", "--schedule", "30 1 * * *", "--batch-size", "64", "--log-file=/x.log", "--rescore"]
    assert strip_cron_args(argv) == ["--batch-size", "64", "--rescore"]


def test_load_batch_quarantines_with_reasons(tmp_path):
    storage = LocalStorage(tmp_path)
    img = np.zeros((28, 28), dtype=np.uint8)
    img[5:20, 8:18] = 200
    storage.put_bytes("in/ok.png", encode_png(img))
    storage.put_bytes("in/empty.png", b"")
    storage.put_bytes("in/gif.gif", b"GIF89a" + b"\0" * 20)
    infos = [ObjectInfo(k, storage.local_path(k).stat().st_size) for k in ("in/ok.png", "in/empty.png", "in/gif.gif")]
    infos.append(ObjectInfo("in/vanished.png", 10))
    batch = load_batch(storage, infos)
    assert batch.keys == ["in/ok.png"] and batch.images.shape == (1, 28, 28)
    reasons = {f.key: f.code for f in batch.failures}
    assert reasons == {
        "in/empty.png": "empty_image",
        "in/gif.gif": "unsupported_format",
        "in/vanished.png": "read_error",
    }


def _manifest(run_id: str, prefix: str) -> RunManifest:
    return RunManifest(
        run_id=run_id,
        date="2026-11-26",
        output_prefix=prefix,
        model_name="m",
        model_version="1",
        input_prefix="incoming/",
        rescore=False,
        started_at="2026-11-26T00:00:00",
    )


def _records(keys: list[str]):
    return _build(keys, random_probs(len(keys), seed=4), run_id="r1")


@mock_aws
def test_ledger_reconciles_a_committed_part_whose_ledger_entry_was_lost_on_s3():
    import boto3

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="batch-units")
    storage = S3Storage("s3://batch-units/store")
    ledger = Ledger(storage, "m", "1")
    manifest = _manifest("r1", "predictions/2026-11-26/r1")
    ledger.write_manifest(manifest)
    # Part 0 fully committed; part 1 written but killed before its ledger entry; part 2 only side files.
    for part, keys in ((0, ["k0", "k1"]), (1, ["k2", "k3"])):
        storage.put_bytes(f"{manifest.output_prefix}/{part_name('parquet', part)}", table_to_parquet(_records(keys)))
    storage.put_bytes(f"{manifest.output_prefix}/{part_name('csv', 2)}", b"orphan")
    from batch_prediction.ledger import ledger_table

    ledger.write_part("r1", 0, ledger_table(_records(["k0", "k1"]), {}))

    state = ledger.runs()["r1"]
    assert not state.done and state.ledger_parts == {0}
    assert ledger.reconcile(state) == 1
    runs = ledger.runs()
    assert runs["r1"].ledger_parts == {0, 1}
    assert sorted(ledger.entries(["r1"], runs)) == ["k0", "k1", "k2", "k3"]
    assert remove_orphans(storage, manifest.output_prefix) == 1
    assert not storage.exists(f"{manifest.output_prefix}/{part_name('csv', 2)}")
    ledger.mark_done("r1")
    assert ledger.runs()["r1"].done
    assert isinstance(runs["r1"], RunState)


def test_simulate_night_copies_unlabelled_images_from_the_test_split_or_a_folder(tmp_path, monkeypatch):
    from PIL import Image

    from batch_prediction import simulate_night
    from data_processing.dataset import Split, save_split

    store = tmp_path / "store"
    monkeypatch.setenv("STORAGE_URI", str(store))
    storage = LocalStorage(store)
    assert simulate_night.main(["--count", "5"]) == 3  # no processed test split yet
    images = np.stack([np.full((28, 28), 10 * i, dtype=np.uint8) for i in range(4)])
    save_split(storage, "test", Split(images, np.arange(4), np.array([f"raw/test/Bag/{i}.png" for i in range(4)])))

    assert simulate_night.main(["--count", "6", "--date", "2026-11-26", "--seed", "1"]) == 0
    keys = [i.key for i in storage.list("incoming/2026-11-26/")]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert not any("Bag" in k for k in keys), "no labels in names"
    pixels = {int(np.asarray(Image.open(io.BytesIO(storage.get_bytes(k))))[0, 0]) for k in keys}
    assert pixels == {0, 10, 20, 30}  # all four drawn before any repeats
    # --if-empty: a night that already has photos gets no more (make demo reruns), an empty one is filled.
    assert simulate_night.main(["--count", "6", "--date", "2026-11-26", "--if-empty"]) == 0
    assert len(list(storage.list("incoming/2026-11-26/"))) == 6
    assert simulate_night.main(["--count", "3", "--date", "2026-11-25", "--if-empty"]) == 0
    assert len(list(storage.list("incoming/2026-11-25/"))) == 3

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(encode_png(images[1]))
    (folder / "notes.txt").write_text("not a photo")
    assert simulate_night.main(["--count", "2", "--source", str(folder), "--date", "2026-11-27"]) == 0
    assert len(list(storage.list("incoming/2026-11-27/"))) == 2
    assert simulate_night.main(["--count", "2", "--source", str(tmp_path / "missing")]) == 2
    assert simulate_night.main(["--count", "0"]) == 2


def test_load_batch_screens_before_reading_and_streams_remote_reads(tmp_path):
    from batch_prediction.reading import screen
    from common.storage import KIND_FIFO, KIND_INVALID_NAME

    assert screen(ObjectInfo("in/a.png", 10), 100) is None
    assert screen(ObjectInfo("in/a.png", 101), 100).code == "object_too_large"
    assert screen(ObjectInfo("in/f.png", 0, kind=KIND_FIFO), 100).code == "not_a_regular_file"
    assert screen(ObjectInfo("in/\\xff.png", 3, kind=KIND_INVALID_NAME), 100).code == "invalid_key"

    class SlowRemote:
        """Not a LocalStorage (so load_batch fetches with its I/O threads); records how many reads overlap."""

        uri = "remote://test"

        def __init__(self, inner: LocalStorage) -> None:
            self.inner, self.inflight, self.peak = inner, 0, 0
            self.lock = threading.Lock()

        def get_bytes(self, key, *, max_bytes=None):
            with self.lock:
                self.inflight += 1
                self.peak = max(self.peak, self.inflight)
            time.sleep(0.01)  # gives the pool the chance to run ahead, if it were allowed to
            try:
                return self.inner.get_bytes(key, max_bytes=max_bytes)
            finally:
                with self.lock:
                    self.inflight -= 1

    local = LocalStorage(tmp_path)
    img = np.zeros((28, 28), dtype=np.uint8)
    img[5:20, 8:18] = 200
    png = encode_png(img)
    infos = []
    for i in range(12):
        local.put_bytes(f"in/{i}.png", png)
        infos.append(ObjectInfo(f"in/{i}.png", len(png)))
    store = SlowRemote(local)
    batch = load_batch(store, infos, io_threads=8, max_inflight_bytes=2 * len(png))
    assert len(batch.keys) == 12 and not batch.failures
    assert store.peak <= 2, "reads ahead are bounded by the in-flight byte budget"
    unbounded = SlowRemote(local)
    load_batch(unbounded, infos, io_threads=8, max_inflight_bytes=10**9)
    assert unbounded.peak > 2  # the same pool without the byte budget does run ahead


def test_select_todo_sees_a_same_size_replacement_through_the_fingerprint():
    done = {
        "in/a.png": LedgerEntry("s1", 100, None, "scored", "1700000000000000000"),
        "in/b.png": LedgerEntry("s2", 100, None, "scored", None),  # an old ledger part: no fingerprint
    }
    listing = [
        ObjectInfo("in/a.png", 100, fingerprint="1700000000500000000"),  # replaced: same size, newer mtime
        ObjectInfo("in/b.png", 100, fingerprint="1700000000000000000"),  # unknown before: size decides
    ]
    todo, skipped = select_todo(listing, done)
    assert [t.key for t in todo] == ["in/a.png"] and skipped == 1


def test_records_and_statistics_of_the_unfamiliarity_score_and_of_parts_from_before_it():
    probs = random_probs(6, seed=4)
    probs[:, 0] = 5.0  # all confident
    probs /= probs.sum(axis=1, keepdims=True)
    bad = [Failure("bad", "", 1, "empty_image", "x")]
    score = np.array([9, 0, 0, 9, 0, 0.0])
    scored = _build([f"k{i}" for i in range(6)], probs, bad, unfamiliarity=score, unfamiliar_threshold=2.0)
    rows = scored.to_pylist()
    assert [r["review_reason"] for r in rows] == ["unfamiliar", None, None, "unfamiliar", None, None, None]
    assert [r["unfamiliar"] for r in rows[:6]] == [True, False, False, True, False, False] and rows[6][
        "unfamiliar"
    ] is None
    old = _build([f"o{i}" for i in range(6)], probs)  # a version without the score
    assert all(r["unfamiliarity"] is None and r["unfamiliar"] is False for r in old.to_pylist())
    before = old.drop_columns(["review_reason", "unfamiliar", "unfamiliarity"])  # a part written before the score
    stats = NightStats()
    for table in (scored, old, before):
        stats.add(table)
    d = stats.to_dict()
    assert d["scored"] == 18 and d["unfamiliar"] == 2 and d["review_reasons"] == {"unfamiliar": 2}
    assert d["unfamiliar_rate"] == pytest.approx(2 / 6)  # of the items whose version computes the score
    assert NightStats().to_dict()["unfamiliar_rate"] is None


def test_the_night_window_keeps_the_unfamiliar_feature_of_parts_written_before_it_existed():
    from batch_prediction.summary import concat_window

    before = {"confidence": np.array([0.9, 0.8]), "predicted_class": np.array([1, 2])}
    after = {**before, "unfamiliar": np.array([1.0, 0.0])}
    for parts in ([before, after], [after, before]):
        window = concat_window(parts)
        assert window["confidence"].tolist() == [0.9, 0.8, 0.9, 0.8] and len(window["unfamiliar"]) == 4
        assert np.nansum(window["unfamiliar"]) == 1.0 and int(np.isnan(window["unfamiliar"]).sum()) == 2
