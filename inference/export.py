"""Export a served Keras model to a fast runtime, check its parity, and log both with the model's MLflow run.

Usage: python -m inference.export MODEL_URI [--tracking-uri URI] [--storage-uri URI]
                                  [--candidates litert-int8,onnx] [-v]
       (also: ric export ...)

e.g. ``python -m inference.export models:/refund-item-classifier@champion`` adds the runtime artifact to a version
registered before exports existed (or re-exports it). Training calls :func:`inference.exporting.export_and_log`
for every new version.

Every candidate is tried: LiteRT with dynamic-range int8 weights, ONNX Runtime in float32 and LiteRT in float32.
Each whose predictions on the validation and test splits agree with the Keras model's (top class on at least
``MIN_AGREEMENT`` of the images, finite probabilities; for a model that computes the unfamiliarity score, its 11th
output column, the items called unfamiliar at the version's threshold agree on at least ``MIN_AGREEMENT`` of them
too and the scores are within ``MAX_SCORE_P99_DIFF`` standard units on 99 % of them, over every parity image:
training adds the validation photos and the unfamiliar test photos, where the score matters) is written to the run's
``runtime/`` folder, listed in ``runtime.json`` (``runtimes``: kind, file, parity report of each) with its answers
on a few probe images in ``probe.npz`` (re-checked whenever it is loaded). Which of them serves is decided where it
runs, by timing them and the Keras graph on that CPU at that path's batch size (:mod:`inference.choice`); ``kind``
names the first that passed (fastest on the development machine, the preference of a loader told ``exported``). When
none passes, ``runtime.json`` says so and why, and the version serves through the Keras graph. The parity report is
logged as metrics of the same run (``runtime_argmax_agreement``, ``runtime_max_prob_diff``,
``runtime_val_accuracy``, ``keras_val_accuracy``, ... of the preferred one, and ``parity_<kind>_*`` for every
candidate) and the runtimes as the run and model-version tags ``runtime`` (the preferred) and ``runtimes`` (all that
passed).

Exit codes: 0 exported (a candidate passed parity); 1 no candidate passed (the version keeps serving through the
Keras graph); 2 usage or settings; 3 the model or the processed splits are unavailable (one line: what to check, when
the tracking server or the store cannot be reached).
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from common.cli import command_parser, explain, fail, from_env, help_settings, read_settings
from common.logging import setup_logging
from common.settings import Settings
from inference.exporting import CANDIDATES, FILES, ExportPlan, export_and_log

if TYPE_CHECKING:
    import keras

    from data_processing.dataset import Split
    from inference.versions import ModelInfo

log = logging.getLogger("inference.export")

EXIT_OK, EXIT_NO_PARITY, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
PROG = "ric export"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("export", __doc__)
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument(
        "--tracking-uri", help=f"MLflow tracking/registry store (default {from_env(env, 'mlflow_tracking_uri')})"
    )
    p.add_argument("--storage-uri", help=f"store holding processed/ (default {from_env(env, 'storage_uri')})")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="runtimes to try, the preferred first")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def load_inputs(model_uri: str, settings: Settings) -> tuple[ModelInfo, keras.Model, dict[str, Split]] | None:
    """The version behind ``model_uri``, its Keras model and the validation and test splits; None when
    ``model_uri`` is not a registered version with a run. Raises what cannot be reached or found."""
    import mlflow.keras

    from common.storage import storage_from_settings
    from data_processing.dataset import load_split
    from inference.versions import resolve_model

    info = resolve_model(model_uri, settings.mlflow_tracking_uri)
    if not info.run_id:
        return None
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = mlflow.keras.load_model(info.pinned_uri)
    storage = storage_from_settings(settings)
    return info, model, {name: load_split(storage, name) for name in ("val", "test")}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(help_settings()).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if (env := read_settings(PROG)) is None:
        return EXIT_USAGE
    setup_logging(args.verbose, env.log_level)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in candidates if c not in FILES]
    if unknown or not candidates:
        log.error("unknown runtime(s) %s; choose from %s", unknown, ", ".join(CANDIDATES))
        return EXIT_USAGE
    settings = env.with_overrides(mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri)
    try:
        inputs = load_inputs(args.model_uri, settings)
    except Exception as exc:
        fail(PROG, f"cannot load {args.model_uri} or its data: {explain(exc, settings)}")
        return EXIT_UNAVAILABLE
    if inputs is None:
        log.error("%s is not a registered version with a run", args.model_uri)
        return EXIT_USAGE
    info, model, splits = inputs
    result = export_and_log(
        model,
        {name: (s.images, s.labels) for name, s in splits.items()},
        info.run_id,
        settings.mlflow_tracking_uri,
        plan=ExportPlan(candidates=candidates, unfamiliar_threshold=info.unfamiliar_threshold),
        registered=(info.name, info.version),
    )
    print(
        f"{info.name} v{info.version}: runtime {result.runtime} "
        f"({result.manifest['reason']}); logged to run {info.run_id}",
        flush=True,
    )
    return EXIT_OK if result.chosen is not None else EXIT_NO_PARITY


if __name__ == "__main__":
    raise SystemExit(main())
