"""Simulate a night of returns: copy N unlabelled photos into ``<STORAGE_URI>/incoming/<date>/``.

Usage:
    python -m batch_prediction.simulate_night --count 10000 [--source test|DIR] [--date YYYY-MM-DD] [--seed 0]
        [--if-empty]

``--source test`` (default) draws from the processed test split (``processed/test.npz``, so run
``data_processing.process`` first) and writes each image as PNG; ``--source DIR`` copies image files
(png, jpg, jpeg, webp, bmp) from a folder, recursively. Names are unique and carry no label
(``incoming/<date>/ret-<batch>-<n>.<ext>``); when N exceeds the source, images are drawn again.

Exit codes: 0 done; 2 usage (bad flags, empty or missing source); 3 the processed test split is missing.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.cli import read_settings
from common.images import encode_png
from common.logging import setup_logging
from common.storage import ObjectNotFound, Storage, join_key, storage_from_settings
from data_processing.dataset import load_split

log = logging.getLogger("batch_prediction.simulate_night")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def incoming_key(prefix: str, date: str, tag: str, n: int, suffix: str) -> str:
    return join_key(prefix, date, f"ret-{tag}-{n:07d}{suffix}")


def from_test_split(storage: Storage, count: int, rng: np.random.Generator) -> Iterator[tuple[bytes, str]]:
    split = load_split(storage, "test")
    order = _draw(len(split), count, rng)
    for i in order:
        yield encode_png(split.images[i]), ".png"


def from_folder(folder: Path, count: int, rng: np.random.Generator) -> Iterator[tuple[bytes, str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for i in _draw(len(files), count, rng):
        yield files[i].read_bytes(), files[i].suffix.lower()


def _draw(available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled selection; repeats only when more are asked for than exist."""
    reps = -(-count // available)
    return np.concatenate([rng.permutation(available) for _ in range(reps)])[:count]


def simulate(
    storage: Storage,
    items: Iterator[tuple[bytes, str]],
    *,
    prefix: str = "incoming",
    date: str,
    threads: int = 16,
) -> list[str]:
    """Write ``items`` under ``prefix/date/`` with fresh unique names; returns the keys written."""
    tag = secrets.token_hex(4)
    keys: list[str] = []

    def put(arg: tuple[int, tuple[bytes, str]]) -> str:
        n, (data, suffix) = arg
        key = incoming_key(prefix, date, tag, n, suffix)
        storage.put_bytes(key, data)
        return key

    with ThreadPoolExecutor(threads) as pool:
        keys.extend(pool.map(put, enumerate(items)))
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--count", type=int, required=True, help="number of photos to drop into incoming/")
    parser.add_argument("--source", default="test", help="'test' (processed test split) or a folder of images")
    parser.add_argument("--date", help="sub-folder of incoming/ (default today, UTC)")
    parser.add_argument("--prefix", default="incoming", help="input prefix the batch job reads (default incoming)")
    parser.add_argument("--seed", type=int, help="random seed for the selection (default: random)")
    parser.add_argument("--storage-uri", help="override STORAGE_URI")
    parser.add_argument(
        "--if-empty",
        action="store_true",
        help="do nothing when incoming/<date>/ already holds photos (lets make demo be rerun without adding more)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (env := read_settings("simulate_night")) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    if args.count <= 0:
        log.error("--count must be positive")
        return 2
    settings = env.with_overrides(storage_uri=args.storage_uri)
    storage = storage_from_settings(settings)
    rng = np.random.default_rng(args.seed)
    date = args.date or datetime.now(UTC).strftime("%Y-%m-%d")
    if args.if_empty:
        present = sum(1 for _ in storage.list(f"{args.prefix}/{date}/"))
        if present:
            log.info("%s/%s/%s/ already holds %d photo(s); nothing added", storage.uri, args.prefix, date, present)
            return 0
    try:
        if args.source == "test":
            items = from_test_split(storage, args.count, rng)
        else:
            folder = Path(args.source)
            if not folder.is_dir():
                log.error("--source must be 'test' or an existing folder, got %r", args.source)
                return 2
            items = from_folder(folder, args.count, rng)
        keys = simulate(storage, items, prefix=args.prefix, date=date)
    except ObjectNotFound as exc:
        log.error("the processed test split is missing (%s): run python -m data_processing.process first", exc)
        return 3
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %d photo(s) under %s/%s/%s/", len(keys), storage.uri, args.prefix, date)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
