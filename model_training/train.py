"""Train the refund-item classifier on the processed splits, track everything in MLflow, register it.

Usage: python model_training/train.py [--epochs N] [--batch-size N] [--learning-rate LR] [--seed N]
                                      [--limit N] [--experiment NAME] [--arch ARCH] [--tta {none,shift5}]
                                      [--precision {auto,float32,mixed_bfloat16}] [--ema-decay D] [--time-budget S]
                                      [--set KEY=VALUE ...] [--no-register] [--force-promote] [-v]
                                      [--finetune] [--no-warehouse]
       (also: ric train ...)

Reads ``processed/{train,val,test}.npz`` from the store (``STORAGE_URI``), trains with shift (and photo)
augmentation, label smoothing and a warm-up + cosine AdamW schedule, keeps the weights of the best validation
epoch (of their moving average with ``--ema-decay``), meanwhile renders the photo benchmark (the validation and
test items as warehouse photos, :mod:`model_training.photo_bench`, cached under ``DATA_DIR/cache``), fits a
calibration temperature on the validation split and photos and bakes it into the served model, optionally wraps
it in test-time augmentation, evaluates ONCE on the test split and the test photos, logs params, metrics
(accuracy, per class, photo benchmark, ECE, wrong-and-confident shares), artifacts, the model, its exported
runtime and the drift reference to MLflow (``MLFLOW_TRACKING_URI``), registers the model as ``MODEL_NAME`` with
alias ``challenger`` and moves ``champion`` to it when its test accuracy and its photo-benchmark accuracy are >=
the current champion's (or there is none, or ``--force-promote``).

The learning loop: the photos people labelled in the warehouse (``python -m monitoring.labels``, the review page,
``POST /labels``) are folded in, through THE preprocessing, split by photo into training, validation and test
shares (:mod:`model_training.warehouse`); the run logs the label set's digest and counts, reports its accuracy on
the warehouse test labels, and the gate also compares it with the champion's on the same photos.
``--finetune`` starts from the champion's weights for a few epochs (minutes instead of the full run; the full run
stays the default of ``make retrain``).

The library does the work: :mod:`model_training.config` (the recipe), :mod:`~model_training.data` (input
pipelines), :mod:`~model_training.fit` (the fit loop), :mod:`~model_training.report` (calibration, evaluation,
plots), :mod:`~model_training.provenance` and :mod:`~model_training.run` (one run, end to end). This script wires.

Environment defaults for the flags (``common.settings.TrainingSettings``): TRAIN_EPOCHS, TRAIN_BATCH_SIZE,
TRAIN_LEARNING_RATE, TRAIN_SEED, TRAIN_ARCH, TRAIN_TTA, TRAIN_PRECISION, TRAIN_EMA_DECAY, TRAIN_TIME_BUDGET,
MLFLOW_EXPERIMENT_NAME; REVIEW_THRESHOLD sets the confidence under which an answer goes to a person (the
wrong-and-confident share counts mistakes at or above it).

Exit codes: 0 success; 1 unexpected error (the MLflow run is marked FAILED), or the MLflow store cannot be reached
(one line: what to check); 2 bad arguments or settings; 3 processed data missing or unusable (run ``python
data_processing/process.py`` first), or the store cannot be read (one line: what to check); 4 ``--finetune``
without a champion to start from; 130 interrupted (Ctrl-C or SIGTERM: the MLflow run is marked KILLED).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from common.cli import (
    command_parser,
    fail,
    from_env,
    help_settings,
    non_negative_float,
    positive_float,
    positive_int,
    read_settings,
    terminate_as_interrupt,
    variable,
)
from common.hardware import apply_assumption
from common.logging import setup_logging
from common.settings import Settings, TrainingSettings
from common.tracking import is_unreachable, tracking_error_message
from inference.tta import TTA_VIEWS
from model_training.config import (
    DEFAULT_EXPERIMENT,
    FINETUNE_EPOCHS,
    FINETUNE_LEARNING_RATE,
    DataMissing,
    RunSummary,
    TrainConfig,
    finetune_recipe,
    with_overrides,
)
from model_training.network import ARCHITECTURES
from model_training.planning import PRECISION_CHOICES, choose_for_machine

log = logging.getLogger("model_training.train")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_DATA, EXIT_NO_CHAMPION, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
PROG = "ric train"
# The training variables whose allowed values this script knows (the settings module sits below the recipe).
CHOICES = {"TRAIN_ARCH": sorted(ARCHITECTURES), "TRAIN_TTA": sorted(TTA_VIEWS), "TRAIN_PRECISION": PRECISION_CHOICES}


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the environment's training settings (``settings.training``) replace the recipe's defaults."""
    top = settings or Settings()
    env = top.training
    d = TrainConfig()

    def default(name: str) -> object:
        value = getattr(env, name)
        return getattr(d, name) if value is None else value

    def knob(name: str) -> str:  # the variable behind a flag and the recipe's own default
        return f"${variable(TrainingSettings, name)}, else the recipe's {getattr(d, name)}"

    p = command_parser("train", __doc__)
    p.add_argument("--epochs", type=positive_int, default=default("epochs"),
                   help=f"training epochs, the most ({knob('epochs')})")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=default("batch_size"),
                   help=f"mini-batch size ({knob('batch_size')})")  # fmt: skip
    p.add_argument("--learning-rate", type=positive_float, default=default("learning_rate"),
                   help=f"peak AdamW learning rate ({knob('learning_rate')})")  # fmt: skip
    p.add_argument("--seed", type=int, default=default("seed"),
                   help=f"seed for init, shuffling, augmentation ({knob('seed')})")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on a random subset of N training images (quick runs, tests; default: all)")  # fmt: skip
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=default("arch"), metavar="ARCH",
                   help=f"architecture, one of {', '.join(sorted(ARCHITECTURES))} ({knob('arch')}; "
                        "'tiny' is for tests)")  # fmt: skip
    p.add_argument("--tta", choices=sorted(TTA_VIEWS), default=default("tta"),
                   help=f"test-time augmentation of the served model ({knob('tta')}): "
                        "'shift5' averages 5 views (5x inference FLOPs)")  # fmt: skip
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=default("precision"),
                   help=f"training arithmetic ({knob('precision')}): auto trains in mixed_bfloat16 where the CPU "
                        "does bfloat16 natively (AVX-512 BF16, AMX, Arm BF16), else float32; the choice and its "
                        "reason are logged. The served model is float32 either way")  # fmt: skip
    p.add_argument("--ema-decay", type=non_negative_float, default=default("ema_decay"),
                   help=f"decay of the weight average that is selected and served, 0 = off "
                        f"({knob('ema_decay')})")  # fmt: skip
    p.add_argument("--time-budget", type=non_negative_float, default=default("time_budget"),
                   help=f"seconds for the whole run ({knob('time_budget')}): a short probe of this machine's "
                        "training speed plans the epochs that fit (at most --epochs; few epochs get the recipe "
                        "measured best for that many), re-checked after every epoch (a run so cut is tagged "
                        "budget_cut); 0 = always --epochs")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="research knob: any other TrainConfig field, e.g. --set erase_prob=0.3 (repeatable; "
                        "logged as params like every knob; default: none)")  # fmt: skip
    p.add_argument("--experiment", default=env.experiment or DEFAULT_EXPERIMENT,
                   help=f"MLflow experiment (${variable(TrainingSettings, 'experiment')})")  # fmt: skip
    p.add_argument("--finetune", action="store_true",
                   help=f"start from the champion's weights: {FINETUNE_EPOCHS} epochs at a peak learning rate of "
                        f"{FINETUNE_LEARNING_RATE:g} unless --epochs / --learning-rate say otherwise (exit 4 without "
                        "a champion)")  # fmt: skip
    p.add_argument("--no-warehouse", action="store_true",
                   help="leave out the labelled warehouse photos (default: folded in when there are any)")  # fmt: skip
    p.add_argument("--reason", default=None,
                   help="why this run (its retrain_reason param; the retrain policy passes its reasons)")  # fmt: skip
    p.add_argument("--no-register", action="store_true", help="log the run but do not register the model")
    p.add_argument("--force-promote", action="store_true",
                   help="make the new version champion even if its test accuracy is lower")  # fmt: skip
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default {from_env(top, 'mlflow_tracking_uri')})")  # fmt: skip
    p.add_argument("--storage-uri", default=None,
                   help=f"data store holding processed/ (default {from_env(top, 'storage_uri')})")  # fmt: skip
    p.add_argument("--model-name", default=None,
                   help=f"registered model name (default {from_env(top, 'model_name')})")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's recipe from the parsed command line (``--set`` pairs last); ValueError for a bad ``--set``."""
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        arch=args.arch,
        tta=args.tta,
        precision=args.precision,
        ema_decay=args.ema_decay,
        time_budget=args.time_budget,
        limit=args.limit,
        experiment=args.experiment,
        register=not args.no_register,
        force_promote=args.force_promote,
        warehouse=not args.no_warehouse,
        extra={"retrain_reason": args.reason} if args.reason else {},
    )
    if args.finetune:  # the short mode's epochs and rate, unless the command line or environment set others
        default = build_parser().get_default
        cfg = finetune_recipe(
            cfg,
            epochs=None if args.epochs == default("epochs") else args.epochs,
            learning_rate=None if args.learning_rate == default("learning_rate") else args.learning_rate,
        )
    return with_overrides(cfg, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(help_settings()).parse_args(argv)
    settings = read_settings(PROG, ("training", "learning"), choices=CHOICES)
    if settings is None:
        return EXIT_USAGE
    setup_logging(args.verbose, settings.log_level)
    settings = settings.with_overrides(
        mlflow_tracking_uri=args.tracking_uri, storage_uri=args.storage_uri, model_name=args.model_name
    )
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    # Before TensorFlow loads: CPU_ASSUME=avx2 makes it compute as on such a CPU; the arithmetic and oneDNN are
    # chosen for this machine (a first run on an AVX2-only CPU times oneDNN both ways in child processes).
    apply_assumption(settings.cpu_assume)
    machine = choose_for_machine(cfg, settings.cpu_assume, Path(settings.data_dir) / "cache")
    cfg = replace(cfg, precision=machine.precision.precision)
    # Imported here, not at the top: TensorFlow, Keras and MLflow take ~4.5 s to import on this machine
    # (`python -c "import tensorflow"` 3.6 s, mlflow 1.2 s), which --help and a usage error need not wait for.
    from model_training.finetune import NoChampion
    from model_training.run import run_training

    try:
        with terminate_as_interrupt():
            summary = run_training(settings, cfg, machine)
    except DataMissing as exc:
        fail(PROG, str(exc))
        return EXIT_NO_DATA
    except NoChampion as exc:
        fail(PROG, str(exc))
        return EXIT_NO_CHAMPION
    except KeyboardInterrupt:
        fail(PROG, "interrupted: its MLflow run, if it had started, is ended KILLED")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if is_unreachable(exc):
            fail(PROG, tracking_error_message(exc, settings.mlflow_tracking_uri))
            return EXIT_ERROR
        log.exception("training failed")
        return EXIT_ERROR
    print(done_line(settings, summary), flush=True)
    return EXIT_OK


def done_line(settings: Settings, summary: RunSummary) -> str:
    """The console's last line: what a person running the script (or a cron log) needs to see."""
    s = summary
    where = f"version {s.version} aliases [{', '.join(s.aliases)}]" if s.version else "not registered"
    cut = f" (cut by the {s.time_budget:.0f} s time budget)" if s.budget_cut else ""
    warehouse = "" if s.warehouse_accuracy is None else f"warehouse_accuracy={s.warehouse_accuracy:.4f} "
    return (
        f"DONE test_accuracy={s.test_accuracy:.4f} macro_f1={s.macro_f1:.4f} photo_accuracy={s.photo_accuracy:.4f} "
        f"{warehouse}epochs={s.epochs_run}/{s.epochs_planned}{cut} time={s.seconds:.0f}s {settings.model_name} "
        f"{where} run={s.run_id} ({s.reason})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
