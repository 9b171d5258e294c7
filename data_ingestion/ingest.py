"""Upload every image under ``<DATA_DIR>/raw`` (or ``--source``) to ``<STORAGE_URI>/raw/<same relative path>``.

Concurrent (S3: a thread pool of ``--workers``; local store: up to ``--workers`` processes, capped at the CPU
cores, each handling chunks of files), idempotent and resumable: the store is listed once (paginated) and an
object is skipped when its stored MD5/ETag (S3) or its content (local store) already matches the local file, so a
second run uploads nothing and a run killed half-way is completed by the next one (uploads are atomic per object,
keys are deterministic, so every object ends up present exactly once). Throttling (503 SlowDown) is retried by
botocore's ``standard`` mode; an item that still fails is retried once more at the end of the run.

Writes the manifest object ``raw/manifest.jsonl`` (one JSON object per line, sorted by key:
``key, size, sha256, label, split``; label is the class id from the ``<split>/<class_slug>/`` folders) and rewrites it
only when it changes. Prints a one-line summary; a progress bar when stderr is a terminal.

For S3 (``STORAGE_URI=s3://bucket/prefix``): with a custom endpoint (``AWS_ENDPOINT_URL``: moto, MinIO, ...) a missing
bucket is created; against AWS itself the bucket must exist (``--create-bucket`` to create it anyway).

Usage: python data_ingestion/ingest.py [--source DIR] [--storage-uri URI] [--workers N] [--create-bucket]
       (also: ric ingest ...)

Exit codes: 0 every image is in the store; 1 some uploads failed (listed on stderr), or the store cannot be used
(one line: what to check); 2 bad arguments or settings; 3 the source folder is missing or holds no images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.settings import Settings
from common.storage import is_storage_error, storage_from_settings
from common.storage_errors import storage_error_message
from data_ingestion.manifest import RAW_PREFIX
from data_ingestion.upload import find_images, ingest

PROG = "ric ingest"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("ingest", __doc__)
    p.add_argument("--source", type=Path, help="folder of images to upload (default <DATA_DIR>/raw)")
    p.add_argument("--storage-uri", help=f"a folder or s3://bucket/prefix (default {from_env(env, 'storage_uri')})")
    p.add_argument("--endpoint-url", help=f"S3-compatible endpoint (default {from_env(env, 'aws_endpoint_url')})")
    p.add_argument("--data-dir", type=Path, help=f"local working folder (default {from_env(env, 'data_dir')})")
    p.add_argument("--workers", type=positive_int, default=16,
                   help="concurrent S3 uploads; local store: processes, capped at the cores")  # fmt: skip
    p.add_argument("--create-bucket", action="store_true", default=None,
                   help="create the S3 bucket if missing (default: only with a custom AWS_ENDPOINT_URL)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings(PROG)) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(
        data_dir=args.data_dir, storage_uri=args.storage_uri, aws_endpoint_url=args.endpoint_url
    )
    source = args.source or Path(settings.data_dir) / "raw"
    if not source.is_dir() or not find_images(source):
        fail(PROG, f"no images under {source} (run ric acquire, or python data_ingestion/acquire.py, first)")
        return 3
    t0 = time.perf_counter()
    try:
        storage = storage_from_settings(
            settings, max_pool_connections=max(args.workers, 10), create_bucket=args.create_bucket
        )
        outcomes, manifest_written = ingest(storage, source, args.workers)
    except Exception as exc:  # the store itself is unreachable/missing: one clear line, not a traceback
        if is_storage_error(exc):
            fail(PROG, storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url))
            return 1
        raise
    secs = time.perf_counter() - t0
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("uploaded", "skipped", "failed")}
    print(
        f"ingest: uploaded {counts['uploaded']}, skipped {counts['skipped']}, failed {counts['failed']} "
        f"of {len(outcomes)} images in {secs:.1f} s ({len(outcomes) / max(secs, 1e-9):,.0f} images/s) "
        f"-> {storage.uri}/{RAW_PREFIX} (manifest {'written' if manifest_written else 'unchanged'})"
    )
    if counts["failed"]:
        print("ingest: these files were NOT uploaded (rerun to retry):", file=sys.stderr)
        for o in sorted((o for o in outcomes if o.status == "failed"), key=lambda o: str(o.path)):
            print(f"  {o.path}: {o.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
