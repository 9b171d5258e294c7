"""One training run, end to end: data -> fit (while the photo benchmark renders) -> calibrate -> evaluate -> MLflow
(params, metrics, artifacts, model, drift reference, exported runtime) -> registry.

The run is named and described for people (:mod:`model_training.describe`), tagged when the time budget cut it, and
owned by this process (:func:`common.tracking.owner_tags`): a run whose process was killed (SIGKILL, or the host
went down) is ended KILLED by the next training run on the same host; Ctrl-C and SIGTERM end it KILLED at once."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import mlflow

from common.hardware import detect_cpu, onednn_enabled
from common.settings import Settings
from common.tracking import NOTE, end_orphaned_runs, ensure_experiment, owner_is_gone, owner_tags
from data_processing.preprocessing import to_model_batch
from inference.exporting import ExportPlan, ExportResult, export_and_log
from inference.records import review_threshold_for
from inference.versions import REVIEW_THRESHOLD_TAG, UNFAMILIAR_THRESHOLD_TAG
from model_training import describe, photo_bench
from model_training import warehouse as wh
from model_training.callbacks import BudgetClock
from model_training.config import RunSummary, TrainConfig
from model_training.data import limit_split, load_splits
from model_training.finetune import Start, champion_start
from model_training.fit import FitResult, configure_tensorflow, fit
from model_training.model_io import log_keras_model
from model_training.planning import (
    MachineChoices,
    OneDnnChoice,
    RunPlan,
    SpeedProbe,
    choose_precision,
    plan_run,
    probe_speed,
)
from model_training.promotion import Challenger, WarehouseComparison, register_and_gate
from model_training.provenance import log_run_inputs, log_warehouse_input, pip_requirements
from model_training.report import EvaluationData, EvaluationReport, evaluate_and_log, log_real_slice, predict_probs
from model_training.unfamiliar_bench import HeadImages, clean_subsample
from monitoring.reference import build_reference, log_reference

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from data_processing.dataset import Split
    from model_training.photo_bench import PhotoSet

log = logging.getLogger(__name__)

PHOTO_WORKERS = 2  # photo-rendering processes (lowest priority: they take what training leaves idle)
# Kept by the time budget for evaluation, MLflow logging, export and registration after the fit: the metric
# after_fit_seconds measured 12 s on a fresh clone's default run (2026-11-27), so 30 s leaves room for a slower
# host; photo renders still pending are added on top.
AFTER_FIT_SECONDS = 30.0


def steps_per_epoch(n_images: int, cfg: TrainConfig) -> int:
    return max(1, math.ceil(n_images / cfg.batch_size))


@dataclass(frozen=True)
class RunData:
    """What a run learns from and is measured on. ``train`` and ``val`` include the labelled warehouse photos when
    there are any; ``clean_train`` and ``clean_val`` are Fashion-MNIST's alone (the logged inputs, the photo
    benchmark's items and the version's description use them). ``start``: the champion to fine-tune from."""

    train: Split
    val: Split
    test: Split
    clean_train: Split
    clean_val: Split
    start: Start | None = None
    warehouse: wh.WarehouseData | None = None


class PhotoRenders:
    """The photo benchmark's sets, rendering in low-priority worker processes while the network trains (or loaded
    from the local cache when the renderer, the preprocessing and the items are unchanged)."""

    def __init__(self, settings: Settings, cfg: TrainConfig, data: RunData) -> None:
        self.cfg = cfg
        self.pending, self._pool = photo_bench.start_benchmark(
            # the benchmark's items stay Fashion-MNIST's, so versions are compared on the same photos
            (data.clean_train, data.clean_val, data.test),
            data_dir=settings.data_dir,
            seed=cfg.photo_seed,
            sizes=photo_bench.BenchmarkSizes.of(cfg),
            workers=PHOTO_WORKERS,
        )

    def seconds_left(self) -> float:
        """Wall seconds the photos still pending would take (the time budget keeps them)."""
        return photo_bench.seconds_left(self.pending.values(), PHOTO_WORKERS)

    def evaluation_data(self, data: RunData) -> EvaluationData:
        """Wait for every set and return what the trained network is evaluated on."""
        t0 = time.perf_counter()
        photo_val, photo_test = self.pending["val"].result(), self.pending["test"].result()
        log.info(
            "photo benchmark: %d val + %d test photos (%s; waited %.0f s after the fit)",
            len(photo_val),
            len(photo_test),
            "cached" if self.pending["val"].from_cache and self.pending["test"].from_cache else "rendered",
            time.perf_counter() - t0,
        )
        rendered = _rendered(self.pending)
        return EvaluationData(data.train, data.val, data.test, photo_val, photo_test, *rendered,
                              head=_head_images(self.pending, data, self.cfg, rendered[0]))  # fmt: skip

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


@dataclass(frozen=True)
class Budget:
    """The time budget's plan of the run (None: no budget, ``cfg.epochs`` are trained) and the speed probe it came
    from; ``start`` is when the run started (a ``time.perf_counter`` reading)."""

    start: float
    plan: RunPlan | None = None
    probe: SpeedProbe | None = None

    def clock(self, cfg: TrainConfig, renders: PhotoRenders) -> BudgetClock:
        """The callbacks' view of the budget: what is left after the fit is kept, photo renders still pending too."""
        after_fit = self.plan.after_fit_seconds if self.plan is not None else AFTER_FIT_SECONDS
        return BudgetClock(cfg.time_budget, self.start, lambda: after_fit + renders.seconds_left())

    @property
    def partial(self) -> bool:
        """The plan trains a single epoch cut short."""
        return self.plan is not None and self.plan.last_epoch_steps is not None


@dataclass(frozen=True)
class Registration:
    """Where the run's model went in the registry (version None: not registered)."""

    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    promoted: bool = False
    reason: str = "registration disabled (--no-register)"


def run_training(settings: Settings, cfg: TrainConfig, machine: MachineChoices | None = None) -> RunSummary:
    """The whole run: data -> fit -> calibrate -> evaluate (test split and photo benchmark) -> MLflow (params,
    metrics, artifacts, model, reference) -> registry. The steps, in order, are :class:`TrainingRun`'s."""
    t_start = time.perf_counter()
    threads = configure_tensorflow()
    machine = machine or machine_as_started(settings, cfg)  # chosen after TensorFlow loaded: oneDNN stays as it is
    cfg = replace(cfg, precision=machine.precision.precision)
    log.info("CPU: %s", machine.describe())
    cfg, data = load_run_data(settings, cfg)
    renders = PhotoRenders(settings, cfg, data)
    try:
        budget = plan_budget(cfg, data, renders, t_start)
        return TrainingRun(settings, cfg, data, renders, budget).execute(machine, threads)
    finally:
        renders.shutdown()


def machine_as_started(settings: Settings, cfg: TrainConfig) -> MachineChoices:
    """The CPU and the precision to train in, with oneDNN as TensorFlow started."""
    cpu = detect_cpu(settings.cpu_assume)
    precision = choose_precision(cfg.precision, cpu, onednn_enabled(cpu))
    return MachineChoices(cpu, precision, OneDnnChoice(onednn_enabled(cpu), "as TensorFlow started"))


def load_run_data(settings: Settings, cfg: TrainConfig) -> tuple[TrainConfig, RunData]:
    """The splits (the training split limited to ``cfg.limit``), the champion to start from and the labelled
    warehouse photos, which join training (repeated) and validation; ``cfg`` with the champion's architecture."""
    train, val, test = load_splits(settings)
    train = limit_split(train, cfg.limit, cfg.seed)
    log.info("data: train %d, val %d, test %d (store %s)", len(train), len(val), len(test), settings.storage_uri)
    cfg, start, warehouse = learning_inputs(settings, cfg)
    data = RunData(train, val, test, train, val, start, warehouse)
    if warehouse is not None:
        repeats = wh.repeats_for(len(train), len(warehouse.splits["train"]), cfg.warehouse_share)
        warehouse.counts["train_repeats"] = repeats
        data = replace(
            data,
            train=wh.with_warehouse(train, warehouse.splits["train"], repeats),
            val=wh.with_warehouse(val, warehouse.splits["val"]),
        )
    return cfg, data


def plan_budget(cfg: TrainConfig, data: RunData, renders: PhotoRenders, t_start: float) -> Budget:
    """With a time budget: probe this machine's speed and plan what it affords (:func:`plan_run`)."""
    if cfg.time_budget <= 0:
        return Budget(t_start)
    probe = probe_speed(data.train, data.val, cfg)
    steps = steps_per_epoch(len(data.train), cfg)
    plan = plan_run(cfg, probe, steps, time.perf_counter() - t_start, renders.seconds_left())
    log.info("this machine affords %s (probe: %.3f s a step)", plan.describe(), probe.step_seconds)
    return Budget(t_start, plan, probe)


class TrainingRun:
    """One training run inside its MLflow run, its steps in the order :meth:`execute` takes them: log the inputs,
    fit, evaluate, log the drift reference, the model and its runtimes, compare on the warehouse photos, register,
    finish. ``requested`` is what the user asked for; ``cfg`` what the budget planned (it may train fewer epochs:
    :func:`describe.budget_cut`)."""

    def __init__(
        self, settings: Settings, requested: TrainConfig, data: RunData, renders: PhotoRenders, budget: Budget
    ) -> None:
        self.settings, self.requested, self.data, self.renders, self.budget = settings, requested, data, renders, budget
        self.cfg = budget.plan.config(requested) if budget.plan is not None else requested

    def execute(self, machine: MachineChoices, threads: int) -> RunSummary:
        uri = self.settings.mlflow_tracking_uri
        exp_id = ensure_experiment(self.cfg.experiment, uri, describe.EXPERIMENT_DESCRIPTION)
        end_abandoned_runs(exp_id, uri)
        name = describe.run_name(self.requested, self.cfg.epochs if self.budget.plan is not None else None)
        tags = {**owner_tags(), NOTE: f"Training ({name}): running."}
        with mlflow.start_run(experiment_id=exp_id, run_name=name, tags=tags) as run:
            try:
                return self.steps(run.info.run_id, machine, threads)
            except BaseException as exc:
                # Ctrl-C and SIGTERM (train.py turns it into an interrupt) are the user's: KILLED, as MLflow's UI says.
                mlflow.end_run(status="FAILED" if isinstance(exc, Exception) else "KILLED")
                raise

    def steps(self, run_id: str, machine: MachineChoices, threads: int) -> RunSummary:
        self.log_inputs(machine, threads)
        result = self.fit()
        t_eval = time.perf_counter()
        cut_tags = describe.cut_tags(self.requested, result.epochs_run, self.budget.partial)
        mlflow.set_tags(cut_tags)
        report, photo_test = self.evaluate(result)
        cut = describe.budget_cut(self.requested, result.epochs_run, self.budget.partial)
        outcome = _outcome(self.settings, self.data.clean_train, result.epochs_run, cut, report)
        # Drift reference: what the monitor compares live traffic against, from the validation split.
        val = self.data.val
        log_reference(build_reference(val.images, report.val_probs, split="val", digest=val.digest(), run_id=run_id))
        model_info, export = self.log_model(report, run_id)
        comparison = warehouse_comparison(
            self.settings, report.served, self.data.warehouse, registering=self.cfg.register
        )
        outcome = replace(outcome, learning=self.learning_note(comparison))
        challenger = Challenger(
            model_info.model_uri,
            run_id,
            report.test.accuracy,
            macro_f1=report.test.macro_f1,
            photo_accuracy=report.photo_test.accuracy,
            photo_benchmark=photo_bench.benchmark_id(photo_test),
            warehouse=comparison,
            tags={**_version_tags(report, export), **cut_tags},
            description=describe.version_description(self.requested, outcome),
        )
        registration = self.register(challenger)
        total_seconds = time.perf_counter() - self.budget.start
        mlflow.log_metrics({"total_seconds": total_seconds, "after_fit_seconds": time.perf_counter() - t_eval})
        self.finish(run_id, outcome, registration, result.epochs_run)
        return RunSummary(
            run_id,
            report.test.accuracy,
            report.test.macro_f1,
            total_seconds,
            registration.version,
            registration.aliases,
            registration.promoted,
            registration.reason,
            photo_accuracy=report.photo_test.accuracy,
            epochs_run=result.epochs_run,
            epochs_planned=self.requested.epochs,
            budget_cut=outcome.cut,
            time_budget=self.requested.time_budget,
            warehouse_accuracy=comparison.challenger if comparison is not None else None,
        )

    def log_inputs(self, machine: MachineChoices, threads: int) -> None:
        """The run's parameters and inputs: data, machine, plan and probe, warehouse photos, the fine-tuned version."""
        data, plan, probe = self.data, self.budget.plan, self.budget.probe
        log_run_inputs(self.settings, self.cfg, data.clean_train, data.clean_val, data.test, threads)
        mlflow.log_params(machine.params())
        if plan is not None and probe is not None:
            mlflow.log_params({**plan.params(), **probe.params()})
        if data.warehouse is not None:
            log_warehouse_input(self.settings, data.warehouse)
        if data.start is not None:
            mlflow.log_param("finetuned_from_version", data.start.version)

    def fit(self) -> FitResult:
        """Train the network within the time budget, from the champion's weights when fine-tuning."""
        return fit(
            self.data.train,
            self.data.val,
            self.cfg,
            log_to_mlflow=True,
            budget=self.budget.clock(self.cfg, self.renders),
            plan=self.budget.plan,
            init_weights=self.data.start.weights if self.data.start is not None else None,
        )

    def evaluate(self, result: FitResult) -> tuple[EvaluationReport, PhotoSet]:
        """Wait for the photo benchmark, build and evaluate the served model (:func:`evaluate_and_log`), score the
        real-surface slice (reporting only); returns the report and the test photos."""
        data = self.renders.evaluation_data(self.data)
        threshold = review_threshold_for(self.settings.review_threshold)
        report = evaluate_and_log(result, self.cfg, data, review_threshold=threshold)
        if data.real_test is not None:  # reporting only: the real-surface slice, photo_real_test_*
            log_real_slice(report.served, data.real_test, data.test)
        return report, data.photo_test

    def log_model(self, report: EvaluationReport, run_id: str) -> tuple[ModelInfo, ExportResult]:
        """Log the served model, then the fast runtimes and their parity reports (the unfamiliarity score's too, at
        the version's threshold), in this run, before the version can be registered."""
        model = report.served
        model_info = log_keras_model(
            model, to_model_batch(self.data.test.images[:2]), pip_requirements=pip_requirements()
        )
        mlflow.set_tag("model_uri", model_info.model_uri)
        export = export_and_log(
            model,
            {name: (x, y) for name, (x, y, _) in report.parity.items()},
            run_id,
            self.settings.mlflow_tracking_uri,
            plan=ExportPlan(unfamiliar_threshold=report.unfamiliar_threshold),
            keras_outputs={name: out for name, (_, _, out) in report.parity.items()},
        )
        return model_info, export

    def learning_note(self, comparison: WarehouseComparison | None) -> str:
        """What the run learned from beyond Fashion-MNIST, for the version's description."""
        start, warehouse = self.data.start, self.data.warehouse
        return describe.learning_note(
            start.version if start is not None else None,
            warehouse.counts if warehouse is not None else None,
            comparison.challenger if comparison is not None else None,
        )

    def register(self, challenger: Challenger) -> Registration:
        """Register the model and apply the champion gate (unless ``--no-register``)."""
        if not self.cfg.register:
            return Registration()
        decision = register_and_gate(
            challenger,
            self.settings.model_name,
            force=self.cfg.force_promote,
            tracking_uri=self.settings.mlflow_tracking_uri,
        )
        mlflow.set_tags({"registered_version": decision.version, "promoted": str(decision.promoted).lower()})
        return Registration(decision.version, decision.aliases, decision.promoted, decision.reason)

    def finish(self, run_id: str, outcome: describe.Outcome, registration: Registration, epochs_run: int) -> None:
        """The run's description for people and its final name (the epochs it trained)."""
        registered = describe.registration_note(registration.version, registration.aliases, registration.reason)
        mlflow.set_tag(NOTE, describe.run_description(self.requested, outcome, registered))
        name = describe.run_name(self.requested, epochs_run, self.budget.partial)
        mlflow.MlflowClient().update_run(run_id, name=name)


def _version_tags(report: EvaluationReport, export: ExportResult) -> dict[str, str]:
    """The new version's tags the API and the nightly job read: its runtimes and its thresholds."""
    return {
        "runtime": export.runtime,
        "runtimes": ",".join(export.passed) or "keras-graph",
        REVIEW_THRESHOLD_TAG: f"{report.metrics['review_threshold_for_target']:.4f}",
        **_unfamiliar_tag(report.unfamiliar_threshold),
    }


def _rendered(pending: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The real-surface validation and test photos and the unfamiliar test photos (None: not asked for)."""
    names = ("real_val", "real_test", photo_bench.UNFAMILIAR_TEST)
    return tuple(pending[n].result() if n in pending else None for n in names)  # type: ignore[return-value]


def _head_images(pending: dict[str, Any], data: RunData, cfg: TrainConfig, real_val: Any) -> HeadImages | None:
    """The outlier-exposure head's images (None: the run does not fit one): photos of training items and clean
    training images against the unfamiliar training photos; the validation photos against the unfamiliar ones."""
    names = ("train", "real_train", photo_bench.UNFAMILIAR_TRAIN, photo_bench.UNFAMILIAR_VAL)
    if cfg.unfamiliar_score != "oe" or not all(n in pending for n in names):
        return None
    train, real_train, ood_train, ood_val = (pending[n].result() for n in names)
    clean = clean_subsample(data.clean_train.images, cfg.unfamiliar_fit_clean, seed=cfg.photo_seed)
    val_in = [pending["val"].result().images, *([real_val.images] if real_val is not None else [])]
    return HeadImages([train.images, real_train.images, clean], val_in, ood_train, ood_val)


def _unfamiliar_tag(threshold: float | None) -> dict[str, str]:
    """The version tag the API and the nightly job read the unfamiliar threshold from (none: no score)."""
    return {} if threshold is None else {UNFAMILIAR_THRESHOLD_TAG: f"{threshold:.6g}"}


def _outcome(
    settings: Settings, train: Split, epochs_run: int, cut: bool, report: EvaluationReport
) -> describe.Outcome:
    return describe.Outcome(
        epochs_run=epochs_run,
        cut=cut,
        test_accuracy=report.test.accuracy,
        photo_accuracy=report.photo_test.accuracy,
        review_threshold=report.metrics["review_threshold_for_target"],
        n_train=len(train),
        train_digest=train.digest(),
        source=f"{settings.storage_uri.rstrip('/')}/processed",
    )


def end_abandoned_runs(experiment_id: str, tracking_uri: str) -> list[str]:
    """End KILLED the RUNNING training runs of this experiment whose process, on this host, no longer exists."""
    ended = end_orphaned_runs(
        mlflow.MlflowClient(tracking_uri=tracking_uri),
        [experiment_id],
        is_orphan=lambda run: owner_is_gone(run.data.tags),
        ended_by="the next training run: its process was gone (killed) while the run was RUNNING",
    )
    if ended:
        log.info("ended %d training run(s) left RUNNING by a killed process: %s", len(ended), ", ".join(ended))
    return ended


def learning_inputs(settings: Settings, cfg: TrainConfig) -> tuple[TrainConfig, Start | None, wh.WarehouseData | None]:
    """The learning loop's part of the input: the champion to start from (``cfg.finetune``; its architecture wins)
    and the labelled warehouse photos (``cfg.warehouse``; None when there are none)."""
    from dataclasses import replace

    from common.storage import storage_from_settings

    start = champion_start(settings) if cfg.finetune else None
    if start is not None and start.arch != cfg.arch:
        log.info("fine-tuning version %s: architecture %s (its own)", start.version, start.arch)
        cfg = replace(cfg, arch=start.arch)
    warehouse = wh.load_warehouse(settings, storage_from_settings(settings)) if cfg.warehouse else None
    return cfg, start, warehouse if warehouse is not None and len(warehouse) else None


def warehouse_comparison(
    settings: Settings, model: object, warehouse: wh.WarehouseData | None, *, registering: bool
) -> WarehouseComparison | None:
    """The trained model's accuracy on the warehouse test photos (logged), and, when it is to be registered, the
    current champion's on the same photos, scored now, for the gate."""
    test = warehouse.splits["test"] if warehouse is not None else None
    if test is None or len(test) == 0:
        return None
    ours = wh.accuracy(predict_probs(model, test.images), test.labels)
    champion = wh.champion_accuracy(settings, test) if registering else None
    mlflow.log_metrics({"warehouse_test_accuracy": ours, "warehouse_test_n": len(test)})
    if champion is not None:
        mlflow.log_metric("warehouse_test_accuracy_champion", champion)
    log.info(
        "warehouse test photos (%d): accuracy %.4f (champion: %s)",
        len(test),
        ours,
        "none" if champion is None else f"{champion:.4f}",
    )
    return WarehouseComparison(len(test), ours, champion)
