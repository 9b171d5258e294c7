"""The nightly input is untrusted (issue 14, item 3): each hostile entry dropped into ``incoming/`` is quarantined
with its reason, the night completes, everything else is scored exactly once, and a rerun scores nothing."""

from __future__ import annotations

import csv
import io
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest

from batch_prediction.batch_predict import main
from common.images import encode_png
from common.storage import storage_from_settings
from tests.support.batch import DATE, assert_exactly_once, nested_folders, run_job, run_prefixes, seed_incoming
from tests.support.decode import scan_bomb_jpeg

pytestmark = pytest.mark.slow


def _quarantine(storage, prefix: str) -> dict[str, str]:
    rows = csv.DictReader(io.StringIO(storage.get_bytes(f"{prefix}/quarantine.csv").decode()))
    return {r["key"]: r["error_code"] for r in rows}


def test_a_file_name_that_is_not_utf8_is_quarantined_under_an_escaped_key(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 20)
    folder = os.fsencode(storage.local_path(f"incoming/{DATE}"))
    with open(folder + b"/ret-\xff\xfe-caf\xe9.png", "wb") as fh:  # Latin-1 bytes: not UTF-8
        fh.write(encode_png(np.full((28, 28), 90, np.uint8)))
    escaped = f"incoming/{DATE}/ret-\\xff\\xfe-caf\\xe9.png"

    assert main(["--workers", "0", "--max-failure-rate", "0.1"]) == 0  # was exit 70, and on every rerun
    [prefix] = run_prefixes(storage)
    assert _quarantine(storage, prefix) == {escaped: "invalid_key"}
    assert_exactly_once(storage, [*good, escaped], version)
    assert main(["--workers", "0"]) == 0  # the next night: listed once, not again (nothing new, nothing written)
    assert run_prefixes(storage) == [prefix]


def test_fifos_sockets_devices_and_links_are_quarantined_never_opened(night_env, tmp_path):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 30)
    day = Path(storage.local_path(f"incoming/{DATE}"))
    expected = {}
    os.mkfifo(day / "ret-fifo.png")  # opening it for reading blocked the job, and its rerun, forever
    expected[f"incoming/{DATE}/ret-fifo.png"] = "not_a_regular_file"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(day / "ret-sock.png"))
    expected[f"incoming/{DATE}/ret-sock.png"] = "not_a_regular_file"
    (day / "ret-gone.png").symlink_to(tmp_path / "does-not-exist.png")  # was skipped silently
    expected[f"incoming/{DATE}/ret-gone.png"] = "broken_link"
    (tmp_path / "elsewhere").mkdir()
    (day / "ret-dir-link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    expected[f"incoming/{DATE}/ret-dir-link"] = "not_a_regular_file"
    if os.geteuid() == 0:  # mknod needs root (CI runs as root)
        os.mknod(day / "ret-null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected[f"incoming/{DATE}/ret-null.png"] = "not_a_regular_file"
    try:
        # Its own process, with loader processes (where the FIFO was opened); the timeout only guards a hang.
        proc = run_job("--workers", "2", "--batch-size", "8", "--max-failure-rate", "0.2", timeout=600)
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    [prefix] = run_prefixes(storage)
    assert _quarantine(storage, prefix) == expected
    assert_exactly_once(storage, good + list(expected), version)
    assert main(["--workers", "0"]) == 0  # the next night: nothing new (none of them is read again), nothing written
    assert run_prefixes(storage) == [prefix]


def test_an_object_over_the_byte_cap_is_quarantined_from_its_listed_size(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 10)
    junk = Path(storage.local_path(f"incoming/{DATE}")) / "ret-junk.png"
    with open(junk, "wb") as fh:  # 300 MB, sparse: it was read whole before being refused as not an image
        fh.truncate(300 * 1024 * 1024)
    assert main(["--workers", "0", "--max-failure-rate", "0.2"]) == 0
    [prefix] = run_prefixes(storage)
    key = f"incoming/{DATE}/ret-junk.png"
    assert _quarantine(storage, prefix) == {key: "object_too_large"}
    assert_exactly_once(storage, [*good, key], version)


def test_a_decoding_work_bomb_is_quarantined_with_its_reason_not_scored(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 10)
    key = f"incoming/{DATE}/ret-scans.jpg"
    storage.put_bytes(key, scan_bomb_jpeg(7000, 2000))  # it was scored after 14.9 s: the night had no decode budget
    assert main(["--workers", "0", "--max-failure-rate", "0.2"]) == 0
    [prefix] = run_prefixes(storage)
    assert _quarantine(storage, prefix) == {key: "decode_work_exceeded"}
    assert_exactly_once(storage, [*good, key], version)


def test_a_deep_tree_hidden_and_temporary_files_and_a_newline_name_are_quarantined_never_skipped(night_env):
    from common.storage import MAX_KEY_DEPTH

    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 10)
    day = Path(storage.local_path(f"incoming/{DATE}"))
    png = encode_png(np.full((28, 28), 90, np.uint8))
    with nested_folders(day, 1100) as deep:  # a legal 2,2xx-character path: the listing raised RecursionError
        (deep / "ret-deep.png").write_bytes(png)
        (day / ".DS_Store").write_bytes(b"\0" * 64)  # these two were skipped silently
        (day / ".tmp-5f3a-ret-9.png").write_bytes(png)
        (day / "ret-two\nlines.png").write_bytes(png)  # broke line-based readers of the CSVs
        expected = {
            "/".join(["incoming", DATE, *["d"] * (MAX_KEY_DEPTH - 2)]): "folder_too_deep",
            f"incoming/{DATE}/.DS_Store": "hidden_file",
            f"incoming/{DATE}/.tmp-5f3a-ret-9.png": "temporary_file",
            f"incoming/{DATE}/ret-two\\x0alines.png": "invalid_key",
        }
        assert main(["--workers", "0", "--max-failure-rate", "0.5"]) == 0  # was exit 70, and on every rerun
        [prefix] = run_prefixes(storage)
        assert _quarantine(storage, prefix) == expected
        csv_lines = storage.get_bytes(f"{prefix}/quarantine.csv").splitlines()
        assert len(csv_lines) == 1 + len(expected)  # one line per row: a line-based reader counts right
        assert_exactly_once(storage, good + list(expected), version)
        assert main(["--workers", "0"]) == 0  # listed once: the rerun finds nothing new and writes no night
        assert run_prefixes(storage) == [prefix]
