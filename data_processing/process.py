"""Turn the ingested raw images into the training-ready dataset.

Reads the manifest ``raw/manifest.jsonl`` from the store (``STORAGE_URI``), downloads the objects concurrently
(S3: threads; local store: chunks in processes, as decoding is CPU-bound),
verifies each one's SHA-256 against the manifest, decodes it with THE preprocessing function
(:func:`data_processing.preprocessing.preprocess_bytes`: PNG/JPEG/WebP/BMP allow-list, 28x28 light-on-dark) and
quarantines anything missing, mismatched, unlabelled or undecodable with a reason in ``processed/quarantine.json``
(the run goes on and says how many). A deterministic stratified validation split (default 500 per class, seed 0;
:mod:`data_processing.split`) is carved from train; test is left alone.

Outputs in the store: ``processed/{train,val,test}.npz`` (:mod:`data_processing.dataset`),
``processed/quarantine.json``, ``processed/items.npz`` (cache of decoded items, keyed by key + SHA-256) and,
written last as the commit marker, ``processed/manifest.json`` (counts per split and class, digests, the input
manifest's hash, parameters).
Also a local working copy for people: ``<DATA_DIR>/processed/{train,val,test}/<label>_<index>.png``.

Incremental: when the input manifest, the parameters and the outputs are unchanged the run says "up to date" and does
nothing else; when items were added, only new or changed objects are downloaded and decoded.

Usage: python data_processing/process.py [--storage-uri URI] [--local-dir DIR | --no-local-copy] [--workers N]
       [--val-per-class 500] [--seed 0] [--force] [--strict]

Exit codes: 0 done or up to date (quarantined items, if any, are counted in the summary and listed in
processed/quarantine.json); 1 unexpected error; 2 bad arguments; 3 no input manifest in the store (run ingest first)
or it is malformed; 4 ``--strict`` and at least one item was quarantined (outputs are still written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from common.cli import read_settings
from common.logging import setup_logging
from common.storage import ObjectNotFound, is_storage_error, storage_from_settings
from data_ingestion.manifest import MANIFEST_KEY as INPUT_MANIFEST_KEY
from data_processing.build import QUARANTINE_KEY, Decoded, Params, run
from data_processing.split import SEED, VAL_MAX_FRACTION, VAL_PER_CLASS

EXIT_OK, EXIT_ERROR, EXIT_ARGS, EXIT_NO_INPUT, EXIT_QUARANTINED = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage-uri", help="override STORAGE_URI (a folder or s3://bucket/prefix)")
    p.add_argument("--endpoint-url", help="override AWS_ENDPOINT_URL (S3-compatible endpoint)")
    p.add_argument("--data-dir", type=Path, help="override DATA_DIR")
    p.add_argument("--local-dir", type=Path, help="local PNG working copy (default <DATA_DIR>/processed)")
    p.add_argument("--no-local-copy", action="store_true", help="do not write the local PNG working copy")
    p.add_argument("--workers", type=int, default=16,
                   help="concurrent S3 downloads; local store: processes, capped at cores (default 16)")  # fmt: skip
    p.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS,
                   help=f"validation images per class carved from train (default {VAL_PER_CLASS})")  # fmt: skip
    p.add_argument("--val-max-fraction", type=float, default=VAL_MAX_FRACTION,
                   help=f"cap on the val share of a class (small datasets; default {VAL_MAX_FRACTION})")  # fmt: skip
    p.add_argument("--seed", type=int, default=SEED, help=f"validation split seed (default {SEED})")
    p.add_argument("--force", action="store_true", help="rebuild everything, ignoring the up-to-date check and cache")
    p.add_argument("--strict", action="store_true", help="exit 4 when any item was quarantined")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _print_quarantine(items: Iterable[Decoded], limit: int = 10) -> None:
    items = list(items)
    for d in items[:limit]:
        print(f"  quarantined {d.entry.key}: [{d.code}] {d.reason}", file=sys.stderr)
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more in {QUARANTINE_KEY}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (env := read_settings("process")) is None:
        return EXIT_ARGS
    setup_logging(args.verbose, env.log_level)
    if args.workers < 1 or args.val_per_class < 0 or not 0 <= args.val_max_fraction < 1:
        print("process: need --workers >= 1, --val-per-class >= 0, 0 <= --val-max-fraction < 1", file=sys.stderr)
        return EXIT_ARGS
    settings = env.with_overrides(
        data_dir=args.data_dir, storage_uri=args.storage_uri, aws_endpoint_url=args.endpoint_url
    )
    local_dir = None if args.no_local_copy else (args.local_dir or Path(settings.data_dir) / "processed")
    storage = storage_from_settings(settings, max_pool_connections=max(args.workers, 10))
    params = Params(args.val_per_class, args.val_max_fraction, args.seed)
    try:
        result = run(storage, local_dir=local_dir, params=params, workers=args.workers, force=args.force)
    except ObjectNotFound:
        print(
            f"process: no {INPUT_MANIFEST_KEY} in {storage.uri} (run data_ingestion/ingest.py first)", file=sys.stderr
        )
        return EXIT_NO_INPUT
    except ValueError as exc:
        print(f"process: {storage.uri}/{INPUT_MANIFEST_KEY}: {exc}", file=sys.stderr)
        return EXIT_NO_INPUT
    except Exception as exc:  # the store is unreachable or the bucket missing: one clear line, not a traceback
        if is_storage_error(exc):
            print(f"process: cannot use the store {storage.uri}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise
    c = result.counts
    if result.up_to_date:
        print(f"process: up to date (input manifest unchanged): train {c['train']}, val {c['val']}, "
              f"test {c['test']} in {storage.uri}/processed")  # fmt: skip
        return EXIT_OK
    n = result.decoded + result.reused
    _print_quarantine(result.quarantined)
    print(
        f"process: train {c['train']}, val {c['val']}, test {c['test']}, quarantined {len(result.quarantined)} "
        f"(see {QUARANTINE_KEY}); decoded {result.decoded}, reused {result.reused} in {result.seconds:.1f} s "
        f"({n / max(result.seconds, 1e-9):,.0f} images/s) -> {storage.uri}/processed"
        + (f", local copy {local_dir}" if local_dir else "")
    )
    if args.strict and result.quarantined:
        return EXIT_QUARANTINED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
