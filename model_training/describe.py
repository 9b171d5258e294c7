"""What a person reads about training in MLflow: run names (``train cnn-fc192 seed42 44ep``), descriptions of the
experiment, the run, the registered model and each version (data, benchmarks, review threshold, whether the time
budget cut the run), and the tags that say a run was cut. Pure functions: the run module logs what they return.

``cfg`` is always the recipe the user asked for (``--epochs`` is the most); the time budget may train fewer epochs,
or cut the only one short, and that is what "cut" means here."""

from __future__ import annotations

from dataclasses import dataclass

from model_training.config import TrainConfig
from model_training.promotion import BUDGET_CUT_KEY, EPOCHS_KEY

EXPERIMENT_DESCRIPTION = (
    "Training runs of the refund-item classifier (model_training/train.py): each run is named 'train <arch> "
    "seed<seed> <epochs>ep', logs its recipe (params), per-epoch curves, the test-split and photo-benchmark "
    "evaluation, the model, its exported runtimes and its drift reference, and registers a version. A run the "
    "time budget cut short is tagged budget_cut=true; one killed by its user is ended KILLED (by itself on Ctrl-C "
    "or SIGTERM, by the next training run on this host after a SIGKILL)."
)


@dataclass(frozen=True)
class Outcome:
    """What a finished run measured: its epochs, benchmarks and data (for names, descriptions and tags)."""

    epochs_run: int
    cut: bool  # the time budget trained fewer epochs than asked for, or cut the only one short
    test_accuracy: float
    photo_accuracy: float
    review_threshold: float
    n_train: int
    train_digest: str
    source: str  # where the processed splits came from
    learning: str = ""  # the learning loop's part (learning_note): fine-tuned from, the warehouse labels


def budget_cut(cfg: TrainConfig, epochs_run: int, partial: bool = False) -> bool:
    """Did the time budget train fewer epochs than ``cfg`` asked for (``--epochs``), or cut its only one short
    (``partial``)?"""
    return cfg.time_budget > 0 and (partial or 0 < epochs_run < cfg.epochs)


def run_name(cfg: TrainConfig, epochs_run: int | None = None, partial: bool = False) -> str:
    """``train cnn-fc192 seed42 44ep`` (``... 5ep cut from 44`` when the budget cut it; ``finetune`` for the short
    mode; ``limit2000`` for a quick run on a subset). Without ``epochs_run`` the asked-for epochs stand in."""
    epochs = cfg.epochs if epochs_run is None else epochs_run
    name = f"train {cfg.arch} seed{cfg.seed} {epochs}ep" + (" finetune" if cfg.finetune else "")
    if epochs_run is not None and budget_cut(cfg, epochs_run, partial):
        name += f" cut from {cfg.epochs}"
    return name + (f" limit{cfg.limit}" if cfg.limit else "")


def cut_tags(cfg: TrainConfig, epochs_run: int, partial: bool = False) -> dict[str, str]:
    """The run's and its version's tags about the time budget."""
    return {EPOCHS_KEY: f"{epochs_run}/{cfg.epochs}", BUDGET_CUT_KEY: str(budget_cut(cfg, epochs_run, partial)).lower()}


def budget_note(cfg: TrainConfig, out: Outcome) -> str:
    """``44 epochs``, or ``5 of 44 planned epochs: the 870 s time budget cut it``."""
    if out.cut:
        return f"{out.epochs_run} of {cfg.epochs} planned epochs: the {cfg.time_budget:.0f} s time budget cut it"
    return f"{out.epochs_run} epochs"


def version_description(cfg: TrainConfig, out: Outcome) -> str:
    """A registered version in a few lines: the recipe, the data, the benchmarks, the review threshold."""
    return (
        f"{cfg.arch}, seed {cfg.seed}, {budget_note(cfg, out)} ({cfg.precision}, TTA {cfg.tta}). "
        f"Trained on {out.n_train:,} images of {out.source} (train digest {out.train_digest[:12]}). "
        f"{out.learning + ' ' if out.learning else ''}"
        f"Test accuracy {out.test_accuracy:.2%}, photo benchmark {out.photo_accuracy:.2%}. "
        f"Items below confidence {out.review_threshold:.3f} go to a person (review threshold)."
    )


def learning_note(finetuned_from: str | None, warehouse: dict[str, int] | None, accuracy: float | None) -> str:
    """``Fine-tuned from version 3. With 412 labelled warehouse photos (train 290 x14, val 60, test 62):
    warehouse test accuracy 81.25%.`` (empty without either)."""
    parts = [f"Fine-tuned from version {finetuned_from}."] if finetuned_from else []
    if warehouse:
        n = warehouse["train"] + warehouse["val"] + warehouse["test"]
        score = f": warehouse test accuracy {accuracy:.2%}" if accuracy is not None else ""
        parts.append(
            f"With {n:,} labelled warehouse photos (train {warehouse['train']} x{warehouse.get('train_repeats', 1)}, "
            f"val {warehouse['val']}, test {warehouse['test']}){score}."
        )
    return " ".join(parts)


def run_description(cfg: TrainConfig, out: Outcome, registered: str) -> str:
    """The run in a few lines for the MLflow UI; ``registered`` says what became of its model."""
    return f"{version_description(cfg, out)} {registered}"


def registration_note(version: str | None, aliases: list[str], reason: str) -> str:
    """``Registered as version 7 (champion, challenger): test accuracy ... >= champion's``, or why not."""
    if version is None:
        return f"Not registered: {reason}."
    return f"Registered as version {version} ({', '.join(aliases) or 'no alias'}): {reason}."
