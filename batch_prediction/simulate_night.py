"""Simulate a night of returns: copy N unlabelled photos into ``<STORAGE_URI>/incoming/<date>/``.

Usage:
    python -m batch_prediction.simulate_night --count 10000 [--source test|DIR] [--date YYYY-MM-DD] [--seed 0]
        [--if-empty]
    (also: ric simulate-night ...)

``--source test`` (default) draws from the processed test split (``processed/test.npz``, so run
``data_processing.process`` first) and writes each image as PNG; ``--source DIR`` copies image files
(png, jpg, jpeg, webp, bmp) from a folder, recursively. Names are unique and carry no label
(``incoming/<date>/ret-<batch>-<n>.<ext>``); when N exceeds the source, images are drawn again.

Exit codes: 0 done; 1 the store cannot be used (one line: what to check: the bucket, AWS_PROFILE, the endpoint);
2 usage (bad flags or settings, empty or missing source); 3 the processed test split is missing.
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

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.images import encode_png
from common.logging import setup_logging
from common.settings import Settings
from common.storage import ObjectNotFound, Storage, is_storage_error, join_key, storage_from_settings
from common.storage_errors import storage_error_message
from data_processing.dataset import load_split

log = logging.getLogger("batch_prediction.simulate_night")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROG = "ric simulate-night"


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


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("simulate-night", __doc__)
    p.add_argument("--count", type=positive_int, required=True, help="number of photos to drop into incoming/")
    p.add_argument("--source", default="test", help="'test' (processed test split) or a folder of images")
    p.add_argument("--date", help="sub-folder of incoming/ (default today, UTC)")
    p.add_argument("--prefix", default="incoming", help="input prefix the batch job reads")
    p.add_argument("--seed", type=int, help="random seed for the selection (default: random)")
    p.add_argument("--storage-uri", help=f"the store (default {from_env(env, 'storage_uri')})")
    p.add_argument(
        "--if-empty",
        action="store_true",
        help="do nothing when incoming/<date>/ already holds photos (lets make demo be rerun without adding more)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (env := read_settings(PROG)) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(storage_uri=args.storage_uri)
    try:
        return simulate_night(settings, args)
    except Exception as exc:  # the store itself: one line with what to check, never botocore's traceback
        if not is_storage_error(exc) or isinstance(exc, ObjectNotFound):
            raise
        fail(PROG, storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url))
        return 1


def simulate_night(settings: Settings, args: argparse.Namespace) -> int:
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
                fail(PROG, f"--source must be 'test' or an existing folder, got {args.source!r}")
                return 2
            items = from_folder(folder, args.count, rng)
        keys = simulate(storage, items, prefix=args.prefix, date=date)
    except ObjectNotFound as exc:
        fail(PROG, f"the processed test split is missing ({exc}): run ric process (python -m data_processing.process)")
        return 3
    except FileNotFoundError as exc:
        fail(PROG, str(exc))
        return 2
    log.info("wrote %d photo(s) under %s/%s/%s/", len(keys), storage.uri, args.prefix, date)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
