"""The labels store (monitoring.label_store) and its command (monitoring.labels): append-only, bound to key and
content hash, idempotent imports, per-row errors, the later label winning with the history kept; the ``import``
command as a person runs it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from common.images import encode_png
from common.settings import PROJECT_ROOT
from common.storage import LocalStorage, open_storage, sha256_hex
from monitoring.label_store import (
    SUBMISSIONS_PREFIX,
    CsvError,
    ItemChecker,
    LabelStore,
    digest_of,
    import_csv,
    parse_label,
    read_label_csv,
)
from tests.support.models import make_tiny_images


def _photos(storage, n: int = 6) -> list[tuple[str, str]]:
    images, _ = make_tiny_images(n, seed=3)
    items = []
    for i, img in enumerate(images):
        key = f"incoming/2026-12-01/ret-x-{i:03d}.png"
        data = encode_png(img)
        storage.put_bytes(key, data)
        items.append((key, sha256_hex(data)))
    return items


def _csv(rows: list[dict], header=("key", "sha256", "class_name", "confidence", "label")) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue().encode()


@pytest.fixture
def store(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    return storage, _photos(storage), LabelStore(storage)


def test_parse_label_accepts_names_ids_and_the_two_extra_answers() -> None:
    assert parse_label("Ankle boot") == "Ankle boot"
    assert parse_label("ankle  BOOT") == "Ankle boot"
    assert parse_label(8) == "Bag" and parse_label("8") == "Bag"
    assert parse_label("Not one of the 10") == "other" and parse_label("unusable photo") == "unusable"
    assert parse_label("Hat") is None and parse_label(10) is None and parse_label(True) is None


def test_labels_bind_key_and_content_and_the_later_label_wins_with_history(store) -> None:
    storage, items, labels = store
    checker = ItemChecker(storage)
    (k0, s0), (k1, s1) = items[0], items[1]
    first = labels.submit([{"key": k0, "sha256": s0, "label": "Bag"}], who="ann", how="api", checker=checker)
    assert first.accepted == 1 and not first.errors
    second = labels.submit(
        [{"key": k0, "sha256": s0, "label": "Sandal"}, {"key": k1, "sha256": s1, "label": 9}],
        who="bob",
        how="review-page",
        checker=ItemChecker(storage),
        idempotency_key="press-2",
    )
    assert second.accepted == 2
    current = labels.current()
    assert current[(k0, s0)].label == "Sandal" and current[(k0, s0)].who == "bob"
    assert current[(k1, s1)].label == "Ankle boot" and current[(k1, s1)].class_id == 9
    assert [lab.label for lab in labels.history() if lab.key == k0] == ["Bag", "Sandal"]

    # The photo is replaced under the same key: its old label does not apply to the new content, and a label
    # quoting the old hash is refused as stale.
    storage.put_bytes(k0, encode_png(make_tiny_images(1, seed=99)[0][0]))
    new_sha = sha256_hex(storage.get_bytes(k0))
    assert (k0, new_sha) not in LabelStore(storage).current()
    row = {"key": k0, "sha256": s0, "label": "Bag"}
    stale = labels.submit([row], who="ann", how="api", checker=ItemChecker(storage))
    assert stale.accepted == 0 and [e.code for e in stale.errors] == ["stale_content_hash"]


def test_bad_rows_are_refused_one_by_one_and_the_rest_is_stored_as_one_submission(store) -> None:
    storage, items, labels = store
    storage.put_bytes("processed/train.npz", b"not a photo")
    rows = [
        {"key": items[0][0], "sha256": items[0][1], "label": "Coat"},
        {"key": "incoming/2026-12-01/nope.png", "sha256": "a" * 64, "label": "Coat"},  # unknown item
        {"key": items[1][0], "sha256": items[1][1], "label": "Hat"},  # unknown class
        {"key": items[2][0], "sha256": "b" * 64, "label": "Coat"},  # stale content hash
        {"key": items[3][0], "sha256": "xyz", "label": "Coat"},  # malformed
        {"key": "processed/train.npz", "sha256": sha256_hex(b"not a photo"), "label": "Bag"},  # not a photo
        {"key": items[4][0], "sha256": items[4][1], "label": "unusable"},
    ]
    result = labels.submit(rows, who="ann", how="api", checker=ItemChecker(storage))
    assert result.accepted == 2
    assert [(e.row, e.code) for e in result.errors] == [
        (1, "unknown_item"),
        (2, "unknown_class"),
        (3, "stale_content_hash"),
        (4, "malformed_row"),
        (5, "unknown_item"),
    ]
    [obj] = list(storage.list(SUBMISSIONS_PREFIX))
    stored = json.loads(storage.get_bytes(obj.key))
    assert [r["label"] for r in stored["labels"]] == ["Coat", "unusable"]
    assert stored["who"] == "ann" and stored["how"] == "api" and stored["recorded_at"]


def test_importing_the_same_csv_twice_counts_once(store) -> None:
    storage, items, labels = store
    data = _csv([{"key": k, "sha256": s, "class_name": "Bag", "label": "Bag"} for k, s in items[:4]])
    first = import_csv(labels, data, who="ann", checker=ItemChecker(storage), source="audit.csv")
    again = import_csv(LabelStore(storage), data, who="bob", checker=ItemChecker(storage), source="audit.csv")
    assert (first.accepted, first.duplicate) == (4, False)
    assert (again.accepted, again.duplicate, again.submission) == (4, True, first.submission)
    assert len(list(storage.list(SUBMISSIONS_PREFIX))) == 1
    assert len(LabelStore(storage).history()) == 4 and len(LabelStore(storage).current()) == 4


def test_csv_errors_carry_line_numbers_and_blank_rows_are_not_errors(store) -> None:
    storage, items, labels = store
    text = (
        "key,sha256,class_name,label\n"
        f"{items[0][0]},{items[0][1]},Bag,Bag\n"  # line 2
        f"{items[1][0]},{items[1][1]},Bag,\n"  # line 3: nobody answered yet
        f"{items[2][0]},{items[2][1]},Bag,Bag,extra\n"  # line 4: malformed
        f"{items[3][0]},{items[3][1]},Bag,Hat\n"  # line 5: unknown class
    )
    result = import_csv(labels, text.encode(), who="ann", checker=ItemChecker(storage))
    assert result.accepted == 1 and result.blank == 1
    assert [(e.row, e.code) for e in result.errors] == [(4, "malformed_row"), (5, "unknown_class")]
    with pytest.raises(CsvError, match="no label column"):
        read_label_csv(b"key,sha256\na,b\n")
    with pytest.raises(CsvError, match="UTF-8"):
        read_label_csv(b"key,sha256,label\n\xff\xfe,b,c\n")


def test_a_killed_submission_leaves_nothing_and_the_store_works_on_s3(s3_uri, moto_server, monkeypatch) -> None:
    storage = open_storage(s3_uri, endpoint_url=moto_server)
    items = _photos(storage, 3)
    labels = LabelStore(storage)

    class Killed(BaseException):
        pass

    def dies(*_a, **_k):
        raise Killed

    monkeypatch.setattr(storage, "put_bytes", dies)
    with pytest.raises(Killed):
        labels.submit([{"key": k, "sha256": s, "label": "Bag"} for k, s in items], who="a", how="api",
                      checker=ItemChecker(storage))  # fmt: skip
    monkeypatch.undo()
    assert LabelStore(storage).current() == {}
    result = labels.submit(
        [{"key": k, "sha256": s, "label": "Bag"} for k, s in items], who="a", how="api", checker=ItemChecker(storage)
    )
    assert result.accepted == 3 and len(LabelStore(storage).current()) == 3
    assert digest_of(LabelStore(storage).current().values()) == digest_of(labels.current().values())


def test_import_command_exit_codes_and_messages(tmp_path, store) -> None:
    storage, items, _ = store
    good = tmp_path / "needs_review.csv"
    good.write_bytes(_csv([{"key": k, "sha256": s, "class_name": "Bag", "label": "Bag"} for k, s in items[:3]]))
    partly = tmp_path / "audit.csv"
    partly.write_bytes(
        _csv([{"key": items[3][0], "sha256": items[3][1], "label": "Bag"}, {"key": "x", "sha256": "y", "label": "Z"}])
    )
    env = {"STORAGE_URI": str(storage.root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "monitoring.labels", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip

    first = run("import", str(good), "--who", "ann", "--no-mlflow")
    assert first.returncode == 0, first.stderr
    assert "3 label(s) stored as submission" in first.stdout
    again = run("import", str(good), "--no-mlflow")
    assert again.returncode == 0 and "already imported (counted once)" in again.stdout
    mixed = run("import", str(partly), "--no-mlflow")
    assert mixed.returncode == 3
    assert f"{partly}:3: malformed_row" in mixed.stderr
    missing = run("import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    summary = run("summary")
    assert summary.returncode == 0
    assert json.loads(summary.stdout)["items"] == 4
