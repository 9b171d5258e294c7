"""A photo replaced under the same key by another of exactly the same size is scored again (issue 14, item 6): the
ledger compares the local store's modification time (S3: the ETag) besides the size."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest

from batch_prediction.batch_predict import main
from common.images import encode_png
from common.storage import sha256_hex, storage_from_settings
from tests.support.batch import run_prefixes, seed_incoming, union_records

pytestmark = pytest.mark.slow


def same_size_png(target_len: int) -> bytes:
    """Another valid PNG (a flat image) padded with a text chunk to exactly ``target_len`` bytes."""
    png = encode_png(np.full((28, 28), 200, np.uint8))
    pad = target_len - len(png) - 12  # a chunk is length + type + data + CRC
    assert pad >= len(b"Comment\0")
    data = b"Comment\0" + b"x" * (pad - len(b"Comment\0"))
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def test_a_photo_replaced_by_one_of_the_same_size_is_scored_again(night_env):
    settings, version = night_env
    storage = storage_from_settings(settings)
    good, _ = seed_incoming(storage, 12)
    assert main(["--workers", "0"]) == 0
    key = good[3]
    before = storage.get_bytes(key)
    replacement = same_size_png(len(before))
    assert len(replacement) == len(before) and replacement != before
    path = storage.local_path(key)
    stat = path.stat()
    storage.put_bytes(key, replacement)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later photo, whatever the clock's grain

    assert main(["--workers", "0"]) == 0
    summary = json.loads(storage.get_bytes(f"{run_prefixes(storage)[-1]}/summary.json"))
    assert (summary["scored"], summary["skipped_already_scored"]) == (1, 11)  # was (0, 12): the change went unseen
    rows = [r for r in union_records(storage, version) if r["key"] == key]
    assert sorted(r["sha256"] for r in rows) == sorted([sha256_hex(before), sha256_hex(replacement)])

    before = run_prefixes(storage)
    assert main(["--workers", "0"]) == 0  # and it is not rescored again: nothing new, nothing written
    assert run_prefixes(storage) == before
