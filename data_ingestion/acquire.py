"""Fill ``<DATA_DIR>/raw`` with the labelled Fashion-MNIST images, one PNG per item, as returned-item photos arrive.

Writes ``raw/{train,test}/<class_slug>/<index>.png`` (``index`` = position in the original split) and
``raw/labels.csv`` (path,label,class_name,split,index,sha256). The four IDX files come from ``--source-dir``
(default ``FASHION_MNIST_DIR``) or are downloaded from Zalando (GitHub mirror as fallback) into
``<DATA_DIR>/downloads`` and verified against the published checksums first.

Immutable and idempotent: a file whose bytes are already correct is not rewritten; a rerun prints "written 0".

Usage: python data_ingestion/acquire.py [--source-dir DIR] [--out DIR] [--limit-per-class N] [--workers N]
       (also: ric acquire ...)

Exit codes: 0 success; 1 a source file failed its checksum or is malformed (nothing written); 2 bad arguments;
3 source files missing or download failed (offline: the message says how to use a local copy; nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from common.cli import command_parser, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.settings import Settings
from data_ingestion.fashion_mnist import BASE_URLS, ChecksumError, DownloadError, IdxFormatError, load_fashion_mnist
from data_ingestion.raw_images import export

log = logging.getLogger("acquire")
DEBIAN_PACKAGE, DEBIAN_DIR = "dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"
# Said when no download source answers: `make demo` on a machine without internet ends here.
OFFLINE_HINT = (
    "no network? Use a local copy of the four IDX .gz files instead: set FASHION_MNIST_DIR (or --source-dir) to "
    f"their folder. Debian packages them: apt-get install {DEBIAN_PACKAGE}, then "
    f"export FASHION_MNIST_DIR={DEBIAN_DIR} (its re-compressed files pass the checksum check)."
)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("acquire", __doc__)
    source = from_env(env, "fashion_mnist_dir")
    p.add_argument("--source-dir", type=Path, help=f"folder holding the 4 IDX .gz files (default {source})")
    p.add_argument("--out", type=Path, help="output folder (default <DATA_DIR>/raw)")
    p.add_argument("--data-dir", type=Path, help=f"local working folder (default {from_env(env, 'data_dir')})")
    p.add_argument("--download-url", action="append", metavar="URL",
                   help="base URL to download the IDX files from, e.g. a mirror (repeatable, tried in order; "
                   "default Zalando's, then GitHub's)")  # fmt: skip
    p.add_argument(
        "--limit-per-class", type=positive_int, help="export only the first N images of each class per split"
    )
    p.add_argument("--workers", type=positive_int, default=4, help="PNG encoder processes, capped at the CPU cores")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings("ric acquire")) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(data_dir=args.data_dir, fashion_mnist_dir=args.source_dir)
    out = args.out or Path(settings.data_dir) / "raw"
    t0 = time.perf_counter()
    try:
        train_x, train_y, test_x, test_y = load_fashion_mnist(
            settings.fashion_mnist_dir, Path(settings.data_dir) / "downloads", args.download_url or BASE_URLS
        )
    except (ChecksumError, IdxFormatError) as exc:
        print(f"acquire: refused: {exc}", file=sys.stderr)
        return 1
    except DownloadError as exc:
        print(f"acquire: {exc}\nacquire: {OFFLINE_HINT}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ConnectionError) as exc:
        print(f"acquire: {exc}", file=sys.stderr)
        return 3
    written, unchanged = export(
        out, {"train": (train_x, train_y), "test": (test_x, test_y)}, args.limit_per_class, max(1, args.workers)
    )
    secs = time.perf_counter() - t0
    print(f"acquire: {written + unchanged} images in {out} (written {written}, unchanged {unchanged}) in {secs:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
