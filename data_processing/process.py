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
       (also: ric process ...)

Exit codes: 0 done or up to date (quarantined items, if any, are counted in the summary and listed in
processed/quarantine.json); 1 the store cannot be used (one line: what to check); 2 bad arguments or settings; 3 no
input manifest in the store (run ingest first) or it is malformed; 4 ``--strict`` and at least one item was
quarantined (outputs are still written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.settings import Settings
from common.storage import ObjectNotFound, is_storage_error, storage_from_settings
from common.storage_errors import storage_error_message
from data_ingestion.manifest import MANIFEST_KEY as INPUT_MANIFEST_KEY
from data_processing.build import QUARANTINE_KEY, Decoded, Params, run
from data_processing.split import SEED, VAL_MAX_FRACTION, VAL_PER_CLASS

EXIT_OK, EXIT_ERROR, EXIT_ARGS, EXIT_NO_INPUT, EXIT_QUARANTINED = 0, 1, 2, 3, 4
PROG = "ric process"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("process", __doc__)
    p.add_argument("--storage-uri", help=f"a folder or s3://bucket/prefix (default {from_env(env, 'storage_uri')})")
    p.add_argument("--endpoint-url", help=f"S3-compatible endpoint (default {from_env(env, 'aws_endpoint_url')})")
    p.add_argument("--data-dir", type=Path, help=f"local working folder (default {from_env(env, 'data_dir')})")
    p.add_argument("--local-dir", type=Path, help="local PNG working copy (default <DATA_DIR>/processed)")
    p.add_argument("--no-local-copy", action="store_true", help="do not write the local PNG working copy")
    p.add_argument("--workers", type=positive_int, default=16,
                   help="concurrent S3 downloads; local store: processes, capped at cores")  # fmt: skip
    p.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS,
                   help="validation images per class carved from train")  # fmt: skip
    p.add_argument("--val-max-fraction", type=float, default=VAL_MAX_FRACTION,
                   help="cap on the val share of a class (small datasets)")  # fmt: skip
    p.add_argument("--seed", type=int, default=SEED, help="validation split seed")
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
    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings(PROG)) is None:
        return EXIT_ARGS
    setup_logging(args.verbose, env.log_level)
    if args.val_per_class < 0 or not 0 <= args.val_max_fraction < 1:
        fail(PROG, "need --val-per-class >= 0 and 0 <= --val-max-fraction < 1")
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
        fail(PROG, f"no {INPUT_MANIFEST_KEY} in {storage.uri} (run ric ingest, or data_ingestion/ingest.py, first)")
        return EXIT_NO_INPUT
    except ValueError as exc:
        fail(PROG, f"{storage.uri}/{INPUT_MANIFEST_KEY}: {exc}")
        return EXIT_NO_INPUT
    except Exception as exc:  # the store is unreachable or the bucket missing: one clear line, not a traceback
        if is_storage_error(exc):
            fail(PROG, storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url))
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
