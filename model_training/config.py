"""What a training run is: every knob of the recipe (:class:`TrainConfig`, all logged as MLflow params), research
overrides (``--set KEY=VALUE``), and what a run returns (:class:`RunSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from common.settings import TRAINING_EXPERIMENT
from model_training.network import DEFAULT_ARCH

DEFAULT_EXPERIMENT = TRAINING_EXPERIMENT
PRECISIONS = ("float32", "mixed_bfloat16")
UNFAMILIAR_SCORES = ("oe", "combined")  # TrainConfig.unfamiliar_score
# Knobs whose value is one of a few names: ``--set`` refuses any other (not a silent fall-back)
CHOICES = {"unfamiliar_score": UNFAMILIAR_SCORES}


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; all of it is logged as MLflow params."""

    epochs: int = 44  # the most; the time budget may train fewer (bfloat16 made an epoch ~18 s on a quiet host)
    batch_size: int = 256  # bigger tensors keep both cores busier (docs/training.md: timing probes)
    learning_rate: float = 4e-3  # peak of the one-cycle schedule
    seed: int = 42
    arch: str = DEFAULT_ARCH
    limit: int | None = None
    weight_decay: float = 0.05  # AdamW: each step shrinks weights by lr x this (5e-4 shrank them by <1 % a run)
    optimizer: str = "adamw"  # or "sgd" (Nesterov momentum 0.9; weight decay is decoupled, scaled by the lr)
    label_smoothing: float = 0.1
    # > 0: the target mixes in each image's own past predictions (averaged over the views it was trained on, i.e.
    # the ensemble of augmented views distilled into the network, free of cost); this is their weight at the end
    # of the run, ramped up linearly from 0 (fit.SelfDistillation)
    distill: float = 0.0
    distill_momentum: float = 0.6  # how much of an image's averaged prediction each new epoch keeps
    warmup_epochs: float = 1.0
    max_shift: int = 1
    erase_prob: float = 0.0
    photo_aug: float = 0.5  # share of training images given photo effects (model.photo_augment)
    photo_texture: float = 0.0  # share of those given a textured backdrop (model._texture; tenth round)
    # > 0: the share of photo effects for the upper-body garments instead (T-shirt, Pullover, Coat, Shirt: the
    # classes photos hurt most, model.UPPER_BODY); the other classes keep photo_aug (eleventh round)
    photo_aug_upper: float = 0.0
    flip: str = "none"  # "none", "all", or "garments" (everything but footwear)
    tta: str = "none"  # test-time views the served model averages (inference.tta.TTA_VIEWS): "none" or "shift5"
    # "auto": mixed_bfloat16 (bfloat16 compute, float32 weights; training only) where the CPU does bfloat16 natively,
    # else float32 (model_training.planning.choose_precision); or either by name
    precision: str = "auto"
    ema_decay: float = 0.999  # > 0: keep an exponential moving average of the weights; select and serve it
    # seconds for the whole run (14.5 min): a probe of the training speed plans the epochs that fit before the first,
    # and the plan is re-checked after every epoch; 0 = off (always ``epochs``)
    time_budget: float = 870.0
    photo_seed: int = 2026  # the photo benchmark's rendering seed (model_training.photo_bench)
    photo_val_per_class: int = 100  # validation photos per class (model choice, calibration)
    photo_test_per_class: int = 200  # test photos per class (reporting)
    # The learning loop: the labelled warehouse photos (model_training.warehouse) are folded in when there are any;
    # their training share is repeated to make up about this share of an epoch.
    warehouse: bool = True
    warehouse_share: float = 0.15
    # Start from the champion's weights (a short run: FINETUNE_EPOCHS at FINETUNE_LEARNING_RATE unless set).
    finetune: bool = False
    # Test items per class on real surfaces, hand-held (the photo_real_* slice, data_processing.real_photos;
    # reporting only: neither calibration nor the review threshold use it). 0 = off.
    photo_real_test_per_class: int = 100
    # Validation items per class on real surfaces (real_val): with the validation photos, the in-distribution photos
    # the unfamiliar threshold is chosen on. 0 = off (the validation photos alone).
    photo_real_val_per_class: int = 50
    # The share of in-distribution photos the unfamiliar threshold may flag (issue 27: 5 %), aimed below by
    # REVIEW_MARGIN_Z standard errors on the validation photos, as the review threshold is (model_training.report)
    unfamiliar_share: float = 0.05
    unfamiliar_test_per_kind: int = 200  # out-of-distribution test photos per kind, scored every run; 0 = off
    # The served unfamiliarity score (inference.unfamiliarity): "oe", outlier exposure, a logistic head on the
    # features and the combined score's parts fitted against unfamiliar training photos; "combined", relative
    # Mahalanobis + energy (docs/training.md, "Unknown items in the served model", for the numbers that chose it)
    unfamiliar_score: str = "oe"
    # The head's data (rendered once, cached like the benchmark): unfamiliar photos per kind to fit on (train, seed
    # tag 23) and to choose its penalty on (val, tag 21); training items per class photographed by each renderer
    # (plain and real surface: the in-distribution side, never the validation photos) and clean training images
    unfamiliar_train_per_kind: int = 150
    unfamiliar_val_per_kind: int = 100
    unfamiliar_fit_per_class: int = 50
    unfamiliar_fit_clean: int = 1000
    experiment: str = DEFAULT_EXPERIMENT
    register: bool = True
    force_promote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


FINETUNE_EPOCHS = 3
FINETUNE_LEARNING_RATE = 1e-3  # a quarter of the full run's peak: move the champion, do not re-learn it
FINETUNE_WARMUP_EPOCHS = 0.2


def finetune_recipe(cfg: TrainConfig, *, epochs: int | None = None, learning_rate: float | None = None) -> TrainConfig:
    """The short mode: from the champion's weights, a few epochs at a lower peak rate (each unless given)."""
    return replace(
        cfg,
        finetune=True,
        epochs=epochs or FINETUNE_EPOCHS,
        learning_rate=learning_rate or FINETUNE_LEARNING_RATE,
        warmup_epochs=min(cfg.warmup_epochs, FINETUNE_WARMUP_EPOCHS),
    )


def with_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """``cfg`` with ``KEY=VALUE`` pairs applied, each value cast to the type of the field's default."""

    not_knobs = ("extra", "register", "force_promote", "limit", "finetune")  # flags of their own, or not a recipe
    known = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in not_knobs}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        current = known[key]
        try:
            if raw.lower() == "none":
                value: Any = None
            elif isinstance(current, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1")
            elif isinstance(current, int | float):
                value = type(current)(float(raw)) if isinstance(current, float) else int(raw)
            else:
                value = raw
        except ValueError as exc:
            raise ValueError(f"--set {pair!r}: {raw!r} is not a valid {type(current).__name__}") from exc
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"--set {pair!r}: choose {key} from {', '.join(CHOICES[key])}")
        changes[key] = value
    return replace(cfg, **changes)


class DataMissing(RuntimeError):
    """The processed splits are not in the store (or are unusable)."""


@dataclass
class RunSummary:
    run_id: str
    test_accuracy: float
    macro_f1: float
    seconds: float
    version: str | None
    aliases: list[str]
    promoted: bool
    reason: str
    photo_accuracy: float | None = None
    epochs_run: int = 0
    epochs_planned: int = 0
    budget_cut: bool = False  # the time budget trained fewer epochs than planned
    time_budget: float = 0.0
    warehouse_accuracy: float | None = None  # on the warehouse test labels (None without any)
