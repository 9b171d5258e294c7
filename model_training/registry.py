"""The model registry from the command line: list versions, promote, roll back, print the champion.

Usage: python -m model_training.registry [--tracking-uri URI] [--model-name NAME] list
       python -m model_training.registry promote VERSION
       python -m model_training.registry rollback
       python -m model_training.registry champion     (prints the champion; exit 4 when there is none)
       (also: ric registry ..., and the older ``ric-registry`` console script)

Aliases: every newly trained version gets ``challenger``; ``champion`` (what the API and the batch job serve)
moves to it only when its test accuracy is >= the current champion's and its photo-benchmark accuracy is >= the
champion's (when both were measured on the same photo set), or there is no champion, or the promotion is forced.
When the run had warehouse test labels (people's labels of the warehouse's own photos), both models are scored on
those same photos when the gate runs and the challenger must not be worse there; a challenger that is strictly
better on them may be up to ``WAREHOUSE_TOLERANCE`` (0.3 points) below the champion on the clean test split and the
photo benchmark (what a warehouse that changed is worth: the clean sets no longer say everything). When its lead on
the warehouse's photos is significant (the Wilson 95 % lower bound of its accuracy there is above the champion's),
the rendered photo benchmark, a stand-in for exactly those photos, may be up to ``PHOTO_TOLERANCE_WAREHOUSE_LEAD``
(1 point) lower; the clean test split keeps its 0.3 points.
Every champion change is recorded, oldest first, in the registered-model tag ``champion_history`` (a JSON list
of versions), so ``rollback`` can restore the previous champion even after several promotions; versions deleted
since are skipped.

``list`` shows each version's epochs, marked ``cut`` when the training run's time budget trained fewer than planned.
Every MLflow call is bounded (:func:`common.tracking.bound_mlflow_calls`): a stopped tracking server fails a command
in seconds, with one line.

Exit codes: 0 success; 1 registry error (unknown model or version: the message lists what exists; nothing to roll
back); 2 bad arguments or settings (VERSION must be a version number); 3 the tracking server is unreachable (one
line: what to check); 4 ``champion``: no champion yet (so ``make demo`` knows to train).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.redact import redact
from common.settings import Settings
from common.tracking import is_unreachable, tracking_error_message
from model_training.promotion import (
    CHAMPION,
    RegistryError,
    alias_version,
    champion_history,
    client_for,
    format_table,
    list_versions,
    model_exists,
    promote,
    require_model,
    require_version,
    rollback,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


EXIT_OK, EXIT_REGISTRY, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_CHAMPION = 0, 1, 2, 3, 4
PROG = "ric registry"

# --- CLI ------------------------------------------------------------------------------------------------


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("registry", __doc__)
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking/registry URI (default {from_env(env, 'mlflow_tracking_uri')})",
    )
    p.add_argument("--model-name", default=None, help=f"registered model name (default {from_env(env, 'model_name')})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="versions with their test metrics, epochs and aliases, newest first")
    pr = sub.add_parser("promote", help="make VERSION the champion (an operator decision: no accuracy gate)")
    pr.add_argument("version", type=positive_int, help="registered version number")
    sub.add_parser("rollback", help="move champion back to the previous champion")
    sub.add_parser("champion", help="print the champion's version and test accuracy; exit 4 when there is none")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings(PROG)) is None:
        return EXIT_USAGE
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(mlflow_tracking_uri=args.tracking_uri, model_name=args.model_name)
    from mlflow.exceptions import MlflowException

    uri = settings.mlflow_tracking_uri
    try:
        return run_command(client_for(uri), settings.model_name, args, uri)
    except Exception as exc:
        if is_unreachable(exc):
            fail(PROG, tracking_error_message(exc, uri))
            return EXIT_UNREACHABLE
        if isinstance(exc, RegistryError | MlflowException):
            fail(PROG, str(getattr(exc, "message", None) or exc))
            return EXIT_REGISTRY
        raise


def run_command(client: MlflowClient, name: str, args: argparse.Namespace, uri: str) -> int:
    """One subcommand against the registry; raises :class:`RegistryError` for what the operator asked wrong."""
    if args.command == "champion":
        mv = alias_version(client, name, CHAMPION) if model_exists(client, name) else None
        if mv is None:
            print(f"{name}: no champion at {redact(uri)}")
            return EXIT_NO_CHAMPION
        print(f"{name}: champion is version {mv.version} (test_accuracy {mv.tags.get('test_accuracy', 'n/a')})")
        return EXIT_OK
    require_model(client, name, uri)
    if args.command == "list":
        rows = list_versions(client, name)
        if not rows:
            print(f"no versions of {name!r} registered at {redact(uri)}")
            return EXIT_OK
        print(format_table(rows, champion_history(client, name)))
    elif args.command == "promote":
        version = str(args.version)
        require_version(client, name, version)
        previous = promote(client, name, version, "manual promotion (ric registry promote)")
        print(f"{name}: champion {previous or 'none'} -> {version}")
    else:
        before, after = rollback(client, name)
        print(f"{name}: champion rolled back {before or 'none'} -> {after}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
