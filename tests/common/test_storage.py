"""The storage layer: the local folder store and S3Storage against moto in-process (paginated listing)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from common.settings import Settings
from common.storage import (
    KIND_DEEP_FOLDER,
    KIND_FILE,
    KIND_INVALID_NAME,
    KIND_TEMPORARY,
    MAX_KEY_DEPTH,
    LocalStorage,
    ObjectNotFound,
    S3Storage,
    Storage,
    join_key,
    md5_hex,
    open_storage,
    storage_from_settings,
)
from tests.support.batch import nested_folders


def exercise(store: Storage) -> None:
    """The contract every implementation must honour."""
    store.put_bytes("raw/b/2.png", b"two")
    store.put_bytes("raw/a/1.png", b"one")
    store.put_bytes("raw/a/1.png", b"one!")  # overwrite
    store.put_bytes("rawx/other", b"x")
    assert store.get_bytes("raw/a/1.png") == b"one!"
    assert store.exists("raw/b/2.png") and not store.exists("raw/c.png")
    listed = list(store.list("raw/"))
    assert [o.key for o in listed] == ["raw/a/1.png", "raw/b/2.png"]
    assert listed[0].size == 4
    assert [o.key for o in store.list("raw")] == ["raw/a/1.png", "raw/b/2.png", "rawx/other"]
    assert [o.key for o in store.list("raw/a/")] == ["raw/a/1.png"]
    assert list(store.list("nothing/")) == []
    store.copy("raw/b/2.png", "copied/2.png")
    assert store.get_bytes("copied/2.png") == b"two"
    assert store.remove_temporaries("raw/") == 0  # completed writes leave nothing to sweep
    assert [o.key for o in store.list("raw/")] == ["raw/a/1.png", "raw/b/2.png"]
    store.delete("raw/b/2.png")
    assert not store.exists("raw/b/2.png")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("raw/b/2.png")
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is a FileNotFoundError for generic callers
        store.get_bytes("never/was")


def test_local_storage_contract(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    exercise(store)
    assert store.local_path("copied/2.png").read_bytes() == b"two"


def test_local_storage_hides_temporary_files_and_refuses_escapes(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("raw/x.png", b"x")
    (tmp_path / "store" / "raw" / ".tmp-123-y.png").write_bytes(b"partial")  # a writer killed mid-write
    assert [o.key for o in store.list("raw/")] == ["raw/x.png"]
    (tmp_path / "store" / "other").mkdir()
    (tmp_path / "store" / "other" / ".tmp-456-z.png").write_bytes(b"partial")
    assert store.remove_temporaries("raw/") == 1  # only under the prefix; objects stay
    assert {p.name for p in (tmp_path / "store").rglob("*") if p.is_file()} == {"x.png", ".tmp-456-z.png"}
    assert store.remove_temporaries("nothing/") == 0
    with pytest.raises(ValueError, match="escapes"):
        store.put_bytes("../outside", b"no")
    assert not (tmp_path / "outside").exists()


def test_local_storage_paths_match_resolve_and_symlinks_cannot_escape(tmp_path: Path) -> None:
    """The cached-directory fast path gives the same files and refusals as resolving every key."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    store = LocalStorage(tmp_path / "store")
    for _ in range(2):  # the second round hits the directory cache
        store.put_bytes("raw/train/Bag/1.png", b"one")
        assert store.get_bytes("raw//train/./Bag/1.png") == b"one"
        assert store.local_path("raw/train/Bag/1.png") == (store.root / "raw/train/Bag/1.png").resolve()
        assert store.local_path("raw/train/../x.png") == store.root / "raw" / "x.png"
    (store.root / "raw" / "link").symlink_to(outside, target_is_directory=True)
    (store.root / "raw" / "train" / "Bag" / "escape.png").symlink_to(outside / "secret.png")
    (store.root / "raw" / "train" / "Bag" / "inside.png").symlink_to(store.root / "raw" / "train" / "Bag" / "1.png")
    for key in ("raw/link/secret.png", "raw/train/Bag/escape.png", "raw/train/../../../outside/secret.png"):
        with pytest.raises(ValueError, match="escapes"):
            store.get_bytes(key)
    assert store.get_bytes("raw/train/Bag/inside.png") == b"one"  # a symlink inside the root is followed
    with pytest.raises(ObjectNotFound):
        store.get_bytes("raw/train/Bag/absent.png")


def test_open_storage_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    with pytest.raises(ValueError, match="unsupported"):
        open_storage("gs://bucket/x")
    with pytest.raises(ValueError, match="no bucket"):
        S3Storage("s3:///prefix")
    store = storage_from_settings(Settings.from_env())
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "data" / "store").resolve()
    assert join_key("/raw/", "train", "", "a.png") == "raw/train/a.png"


@mock_aws
def test_s3_storage_contract_and_checksums() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bucket-b")
    store = S3Storage("s3://bucket-b/some/prefix")
    exercise(store)
    store.put_bytes("k", b"payload")
    head = store.client.head_object(Bucket="bucket-b", Key="some/prefix/k", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # SHA-256 checksum sent on upload and kept by the store
    info = next(iter(store.list("k")))
    assert info.md5 == md5_hex(b"payload")
    # Keys outside the prefix are invisible.
    store.client.put_object(Bucket="bucket-b", Key="elsewhere/k", Body=b"z")
    assert all(not o.key.startswith("elsewhere") for o in store.list())


@mock_aws
def test_s3_listing_paginates_beyond_1000_keys() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="many")
    store = S3Storage("s3://many/p")
    keys = [f"raw/{i:05d}.png" for i in range(1234)]
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for k in keys:  # straight into moto's backend: the listing (through boto3's paginator) is what is under test
        backend.put_object("many", f"p/{k}", b"x")
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append("list"))
    listed = [o.key for o in store.list("raw/")]
    assert listed == keys
    assert len(calls) == 2  # two pages of at most 1,000


@mock_aws
def test_ensure_bucket_creates_only_when_missing() -> None:
    store = S3Storage("s3://fresh-bucket/x")
    store.ensure_bucket()
    store.put_bytes("a", b"1")
    store.ensure_bucket()  # idempotent: existing content untouched
    assert store.get_bytes("a") == b"1"
    eu = S3Storage("s3://eu-bucket/x", client=boto3.client("s3", region_name="eu-west-1"))
    eu.ensure_bucket()
    assert eu.client.get_bucket_location(Bucket="eu-bucket")["LocationConstraint"] == "eu-west-1"


def test_s3_retry_configuration_is_standard_and_bounded() -> None:
    store = S3Storage("s3://bucket-b/p", endpoint_url="http://127.0.0.1:9")
    retries = store.client.meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 10
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"


def test_local_listing_reports_what_is_not_a_regular_file(tmp_path: Path) -> None:
    import os
    import socket

    from common.storage import (
        KIND_BROKEN_LINK,
        KIND_DIRECTORY_LINK,
        KIND_FIFO,
        KIND_FILE,
        KIND_INVALID_NAME,
        KIND_SOCKET,
    )

    store = LocalStorage(tmp_path / "store")
    store.put_bytes("in/ok.png", b"12345")
    folder = store.root / "in"
    os.mkfifo(folder / "fifo.png")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.png"))
        (folder / "gone.png").symlink_to(tmp_path / "nowhere")
        (folder / "dir").symlink_to(tmp_path, target_is_directory=True)
        (folder / "link.png").symlink_to(folder / "ok.png")
        with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as fh:
            fh.write(b"x")
        listed = {o.key: (o.kind, o.size) for o in store.list("in/")}
    assert listed == {
        "in/ok.png": (KIND_FILE, 5),
        "in/link.png": (KIND_FILE, 5),  # a link to a file inside the store is that file
        "in/fifo.png": (KIND_FIFO, 0),
        "in/sock.png": (KIND_SOCKET, 0),
        "in/gone.png": (KIND_BROKEN_LINK, 0),  # was skipped silently
        "in/dir": (KIND_DIRECTORY_LINK, 0),
        "in/caf\\xe9.png": (KIND_INVALID_NAME, 1),  # valid UTF-8 text, escaped
    }
    for key in listed:
        key.encode("utf-8")  # every key can be written to Parquet / CSV


def test_local_get_bytes_never_blocks_on_a_fifo_and_honours_the_byte_cap(tmp_path: Path) -> None:
    import os
    import threading

    from common.storage import NotARegularObject, ObjectTooLarge

    store = LocalStorage(tmp_path / "store")
    store.put_bytes("in/a.png", b"x" * 100)
    os.mkfifo(store.root / "in" / "fifo.png")
    outcome: list[BaseException] = []

    def read_fifo() -> None:
        try:
            store.get_bytes("in/fifo.png")
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read_fifo, daemon=True)
    reader.start()
    reader.join(timeout=30)  # only guards the hang the finding was about: opening a FIFO waits for a writer
    assert not reader.is_alive(), "get_bytes blocked on a FIFO"
    assert len(outcome) == 1 and isinstance(outcome[0], NotARegularObject)
    assert store.get_bytes("in/a.png", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLarge):
        store.get_bytes("in/a.png", max_bytes=99)


@mock_aws
def test_s3_get_bytes_refuses_an_object_over_the_cap_from_its_length() -> None:
    from common.storage import ObjectTooLarge

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="capped")
    store = S3Storage("s3://capped/p")
    store.put_bytes("big", b"y" * 1000)
    assert store.get_bytes("big", max_bytes=1000) == b"y" * 1000
    with pytest.raises(ObjectTooLarge):
        store.get_bytes("big", max_bytes=999)


def test_a_tree_of_1100_nested_folders_is_listed_to_the_depth_limit_without_recursion(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("incoming/2026-11-26/a.png", b"a")
    with nested_folders(store.root / "incoming" / "2026-11-26", 1100) as deep:  # a legal ~2,240-character path
        (deep / "bottom.png").write_bytes(b"b")
        (store.root / "incoming" / "2026-11-26" / "d" / "shallow.png").write_bytes(b"s")
        listed = list(store.list("incoming/"))  # os.walk raised RecursionError here, on every night
        assert store.remove_temporaries("incoming/") == 0  # the temp sweep walks the same way
    limit = "/".join(["incoming", "2026-11-26", *["d"] * (MAX_KEY_DEPTH - 2)])
    assert [(o.key, o.kind) for o in listed] == [
        ("incoming/2026-11-26/a.png", KIND_FILE),
        (limit, KIND_DEEP_FOLDER),  # reported, with what it holds: never silently skipped
        ("incoming/2026-11-26/d/shallow.png", KIND_FILE),
    ]


def test_temporary_files_are_listed_only_when_asked_and_control_characters_are_escaped(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("in/ok.png", b"ok")
    (store.root / "in" / ".tmp-0123-x.png").write_bytes(b"t")
    (store.root / "in" / "two\nlines.png").write_bytes(b"n")
    assert [(o.key, o.kind) for o in store.list("in/")] == [
        ("in/ok.png", KIND_FILE),
        ("in/two\\x0alines.png", KIND_INVALID_NAME),
    ]
    assert ("in/.tmp-0123-x.png", KIND_TEMPORARY) in [(o.key, o.kind) for o in store.list("in/", temporaries=True)]


@mock_aws
def test_s3_keys_with_a_newline_are_listed_escaped() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="lines")
    store = S3Storage("s3://lines/p")
    store.put_bytes("in/ok.png", b"ok")
    store.client.put_object(Bucket="lines", Key="p/in/two\nlines.png", Body=b"n")
    assert [(o.key, o.kind) for o in store.list("in/")] == [
        ("in/ok.png", KIND_FILE),
        ("in/two\\x0alines.png", KIND_INVALID_NAME),
    ]
