"""The labels people give returned items, from a spreadsheet: import a night's CSV with a label column, or count
what the store holds. The store itself (one append-only store under ``labels/``, bound to each item's key and content
hash, checked row by row) is :mod:`monitoring.label_store`.

Usage: python -m monitoring.labels import FILE [--who NAME] [--no-mlflow]   (a night's CSV with a label column)
       python -m monitoring.labels summary                                  (how many items are labelled, and how)
       (also: ric labels ...)

Rows are checked before anything is written: the key must name a photo under the input prefix (``unknown_item``),
the hash must be its current content (``stale_content_hash``), the answer one of the 10 classes, ``other`` or
``unusable``, or a class id (``unknown_class``), the row whole (``malformed_row``). Bad rows are reported one by one
and the good rest is stored, in one submission (whole or not at all); importing the same file twice counts once.
New audit labels are written back to the nights' MLflow runs as measured accuracy (``--no-mlflow``: not).

Exit codes:
    0  every answered row stored (or the file was imported before)
    1  the store failed
    2  bad arguments or settings, or the file is not a labels CSV (not UTF-8, no key/sha256/label column)
    3  some rows were refused (each printed with its line number and reason; the other rows are stored)
"""

from __future__ import annotations

import argparse
import json
import logging

from common.cli import command_parser, from_env
from common.settings import Settings
from common.storage import Storage
from monitoring.label_store import CsvError, ItemChecker, LabelStore, import_csv, summarize
from monitoring.performance import RegistryFigures, StatusPolicy, performance_table, write_back

PROG = "ric labels"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    from pathlib import Path

    env = settings or Settings()
    p = command_parser("labels", __doc__)
    p.add_argument("--storage-uri", help=f"the store (default {from_env(env, 'storage_uri')})")
    p.add_argument(
        "--tracking-uri", help=f"MLflow store of the nights' runs (default {from_env(env, 'mlflow_tracking_uri')})"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="{import,summary}")
    imp = sub.add_parser("import", help="import a night's CSV (needs_review.csv or audit.csv) with a label column")
    imp.add_argument("file", type=Path, help="the CSV: key, sha256 and label columns (others are ignored)")
    imp.add_argument("--who", default=None, help="who labelled it (default: the login name)")
    imp.add_argument("--no-mlflow", action="store_true", help="do not write measured accuracy back to MLflow")
    sub.add_parser("summary", help="print the store's counts as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    import getpass
    import sys

    from common.cli import explain, fail, help_settings, read_settings
    from common.logging import setup_logging
    from common.storage import is_storage_error, storage_from_settings

    log = logging.getLogger("monitoring.labels")
    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings(PROG, ("batch", "learning"))) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(storage_uri=args.storage_uri, mlflow_tracking_uri=args.tracking_uri)
    try:
        storage = storage_from_settings(settings)
        store = LabelStore(storage)
        if args.command == "summary":
            print(json.dumps(summarize(store), indent=2))
            return 0
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            fail(f"{PROG} import", f"cannot read {args.file}: {exc.strerror or exc}")
            return 2
        checker = ItemChecker(storage, settings.batch.input_prefix, settings.batch.max_object_bytes)
        who = args.who or getpass.getuser()
        try:
            result = import_csv(store, data, who=who, checker=checker, source=args.file.name)
        except CsvError as exc:
            fail(f"{PROG} import", f"{args.file}: {exc}")
            return 2
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        fail(PROG, f"the store failed: {explain(exc, settings)}")
        return 1
    for err in result.errors:
        print(f"{args.file}:{err.row}: {err.code}: {err.message}", file=sys.stderr)
    what = "already imported (counted once)" if result.duplicate else f"stored as submission {result.submission}"
    print(
        f"labels import: {result.accepted} label(s) {what if result.accepted else 'stored: none'}; "
        f"{len(result.errors)} row(s) refused; {result.blank} row(s) without a label"
    )
    if result.accepted and not result.duplicate and not args.no_mlflow:
        _write_back(settings, storage, store, log)
    return 3 if result.errors else 0


def _write_back(settings: Settings, storage: Storage, store: LabelStore, log: logging.Logger) -> None:
    """New audit labels move the nights' measured accuracy: write it to their MLflow runs (a failure only warns)."""
    loop = settings.learning
    try:
        figures = RegistryFigures(settings.mlflow_tracking_uri, settings.model_name)
        rows = performance_table(
            storage, store.current(), figures, StatusPolicy(loop.accuracy_margin, loop.accuracy_min_labels)
        )
        write_back(settings.mlflow_tracking_uri, rows)
    except Exception as exc:  # the labels are stored; MLflow catches up on the next write-back
        log.warning("measured accuracy not written to MLflow: %s", exc)


if __name__ == "__main__":
    raise SystemExit(main())
