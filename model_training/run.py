"""One training run, end to end: data -> fit (while the photo benchmark renders) -> calibrate -> evaluate -> MLflow
(params, metrics, artifacts, model, drift reference, exported runtime) -> registry.

The run is named and described for people (:mod:`model_training.describe`), tagged when the time budget cut it, and
owned by this process (:func:`common.tracking.owner_tags`): a run whose process was killed (SIGKILL, or the host
went down) is ended KILLED by the next training run on the same host; Ctrl-C and SIGTERM end it KILLED at once."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import mlflow

from common.hardware import detect_cpu, onednn_enabled
from common.settings import Settings
from common.tracking import NOTE, end_orphaned_runs, ensure_experiment, owner_is_gone, owner_tags
from data_processing.preprocessing import to_model_batch
from inference.exporting import ExportPlan, export_and_log
from inference.records import review_threshold_for
from inference.versions import REVIEW_THRESHOLD_TAG, UNFAMILIAR_THRESHOLD_TAG
from model_training import describe, photo_bench
from model_training import warehouse as wh
from model_training.callbacks import BudgetClock
from model_training.config import RunSummary, TrainConfig
from model_training.data import limit_split, load_splits
from model_training.finetune import Start, champion_start
from model_training.fit import configure_tensorflow, fit
from model_training.model_io import log_keras_model
from model_training.planning import MachineChoices, OneDnnChoice, choose_precision, plan_run, probe_speed
from model_training.promotion import Challenger, WarehouseComparison, register_and_gate
from model_training.provenance import log_run_inputs, log_warehouse_input, pip_requirements
from model_training.report import EvaluationData, evaluate_and_log, log_real_slice, predict_probs
from monitoring.reference import build_reference, log_reference

log = logging.getLogger(__name__)

PHOTO_WORKERS = 2  # photo-rendering processes (lowest priority: they take what training leaves idle)
# Kept by the time budget for evaluation, MLflow logging, export and registration after the fit: the metric
# after_fit_seconds measured 12 s on a fresh clone's default run (2026-11-27), so 30 s leaves room for a slower
# host; photo renders still pending are added on top.
AFTER_FIT_SECONDS = 30.0


def steps_per_epoch(n_images: int, cfg: TrainConfig) -> int:
    return max(1, math.ceil(n_images / cfg.batch_size))


def run_training(settings: Settings, cfg: TrainConfig, machine: MachineChoices | None = None) -> RunSummary:
    """The whole run: data -> fit -> calibrate -> evaluate (test split and photo benchmark) -> MLflow (params,
    metrics, artifacts, model, reference) -> registry."""

    t_start = time.perf_counter()
    threads = configure_tensorflow()
    if machine is None:  # chosen here, after TensorFlow loaded: oneDNN stays as it is
        cpu = detect_cpu(settings.cpu_assume)
        precision = choose_precision(cfg.precision, cpu, onednn_enabled(cpu))
        machine = MachineChoices(cpu, precision, OneDnnChoice(onednn_enabled(cpu), "as TensorFlow started"))
    cfg = replace(cfg, precision=machine.precision.precision)
    log.info("CPU: %s", machine.describe())
    train, val, test = load_splits(settings)
    train = limit_split(train, cfg.limit, cfg.seed)
    log.info("data: train %d, val %d, test %d (store %s)", len(train), len(val), len(test), settings.storage_uri)
    cfg, start, warehouse = learning_inputs(settings, cfg)
    clean_train, clean_val = train, val
    if warehouse is not None:  # the labelled warehouse photos join training (repeated) and validation
        repeats = wh.repeats_for(len(train), len(warehouse.splits["train"]), cfg.warehouse_share)
        train = wh.with_warehouse(train, warehouse.splits["train"], repeats)
        val = wh.with_warehouse(val, warehouse.splits["val"])
        warehouse.counts["train_repeats"] = repeats
    # The photo benchmark renders in low-priority worker processes while the network trains (or comes from the
    # local cache when the renderer, the preprocessing and the items are unchanged).
    pending, render_pool = photo_bench.start_benchmark(
        clean_val,  # the benchmark's items stay Fashion-MNIST's, so versions are compared on the same photos
        test,
        data_dir=settings.data_dir,
        seed=cfg.photo_seed,
        sizes=photo_bench.BenchmarkSizes.of(cfg),
        workers=PHOTO_WORKERS,
    )

    requested = cfg  # what the user asked for: the plan may train fewer epochs (describe.budget_cut)
    plan = None
    if cfg.time_budget > 0:
        probe = probe_speed(train, val, cfg)
        renders = photo_bench.seconds_left(pending.values(), PHOTO_WORKERS)
        plan = plan_run(cfg, probe, steps_per_epoch(len(train), cfg), time.perf_counter() - t_start, renders)
        cfg = plan.config(cfg)
        log.info("this machine affords %s (probe: %.3f s a step)", plan.describe(), probe.step_seconds)
    exp_id = ensure_experiment(cfg.experiment, settings.mlflow_tracking_uri, describe.EXPERIMENT_DESCRIPTION)
    end_abandoned_runs(exp_id, settings.mlflow_tracking_uri)
    name = describe.run_name(requested, cfg.epochs if plan is not None else None)
    try:
        with mlflow.start_run(
            experiment_id=exp_id, run_name=name, tags={**owner_tags(), NOTE: f"Training ({name}): running."}
        ) as run:
            run_id = run.info.run_id
            try:
                log_run_inputs(settings, cfg, clean_train, clean_val, test, threads)
                mlflow.log_params(machine.params())
                if plan is not None:
                    mlflow.log_params({**plan.params(), **probe.params()})
                after_fit = plan.after_fit_seconds if plan is not None else AFTER_FIT_SECONDS
                if warehouse is not None:
                    log_warehouse_input(settings, warehouse)
                if start is not None:
                    mlflow.log_param("finetuned_from_version", start.version)
                result = fit(
                    train,
                    val,
                    cfg,
                    log_to_mlflow=True,
                    budget=BudgetClock(
                        cfg.time_budget,
                        t_start,
                        lambda: after_fit + photo_bench.seconds_left(pending.values(), PHOTO_WORKERS),
                    ),
                    plan=plan,
                    init_weights=start.weights if start is not None else None,
                )
                t_eval = time.perf_counter()
                partial = plan is not None and plan.last_epoch_steps is not None  # its only epoch, cut short
                cut_tags = describe.cut_tags(requested, result.epochs_run, partial)
                mlflow.set_tags(cut_tags)
                photo_val, photo_test = pending["val"].result(), pending["test"].result()
                log.info(
                    "photo benchmark: %d val + %d test photos (%s; waited %.0f s after the fit)",
                    len(photo_val),
                    len(photo_test),
                    "cached" if pending["val"].from_cache and pending["test"].from_cache else "rendered",
                    time.perf_counter() - t_eval,
                )
                data = EvaluationData(train, val, test, photo_val, photo_test, *_rendered(pending))
                report = evaluate_and_log(
                    result, cfg, data, review_threshold=review_threshold_for(settings.review_threshold)
                )
                model = report.served
                if data.real_test is not None:  # reporting only: the real-surface slice, photo_real_test_*
                    log_real_slice(model, data.real_test, test)
                cut = describe.budget_cut(requested, result.epochs_run, partial)
                outcome = _outcome(settings, clean_train, result.epochs_run, cut, report)

                # Drift reference: what the monitor compares live traffic against, from the validation split.
                log_reference(
                    build_reference(val.images, report.val_probs, split="val", digest=val.digest(), run_id=run_id)
                )

                model_info = log_keras_model(
                    model, to_model_batch(test.images[:2]), pip_requirements=pip_requirements()
                )
                mlflow.set_tag("model_uri", model_info.model_uri)
                # The fast runtimes and their parity reports (the unfamiliarity score's too, at the version's
                # threshold), in this run, before the version can be registered.
                export = export_and_log(
                    model,
                    {name: (x, y) for name, (x, y, _) in report.parity.items()},
                    run_id,
                    settings.mlflow_tracking_uri,
                    plan=ExportPlan(unfamiliar_threshold=report.unfamiliar_threshold),
                    keras_outputs={name: out for name, (_, _, out) in report.parity.items()},
                )

                comparison = warehouse_comparison(settings, model, warehouse, registering=cfg.register)
                outcome = replace(outcome, learning=describe.learning_note(
                    start.version if start is not None else None,
                    warehouse.counts if warehouse is not None else None,
                    comparison.challenger if comparison is not None else None,
                ))  # fmt: skip
                version, aliases, promoted, reason = None, [], False, "registration disabled (--no-register)"
                if cfg.register:
                    challenger = Challenger(
                        model_info.model_uri,
                        run_id,
                        report.test.accuracy,
                        macro_f1=report.test.macro_f1,
                        photo_accuracy=report.photo_test.accuracy,
                        photo_benchmark=photo_bench.benchmark_id(photo_test),
                        warehouse=comparison,
                        tags={
                            "runtime": export.runtime,
                            "runtimes": ",".join(export.passed) or "keras-graph",
                            REVIEW_THRESHOLD_TAG: f"{report.metrics['review_threshold_for_target']:.4f}",
                            **_unfamiliar_tag(report.unfamiliar_threshold),
                            **cut_tags,
                        },
                        description=describe.version_description(requested, outcome),
                    )
                    decision = register_and_gate(
                        challenger,
                        settings.model_name,
                        force=cfg.force_promote,
                        tracking_uri=settings.mlflow_tracking_uri,
                    )
                    version, aliases, promoted, reason = (
                        decision.version,
                        decision.aliases,
                        decision.promoted,
                        decision.reason,
                    )
                    mlflow.set_tags({"registered_version": version, "promoted": str(promoted).lower()})
                total_seconds = time.perf_counter() - t_start
                mlflow.log_metrics({"total_seconds": total_seconds, "after_fit_seconds": time.perf_counter() - t_eval})
                registered = describe.registration_note(version, aliases, reason)
                mlflow.set_tag(NOTE, describe.run_description(requested, outcome, registered))
                mlflow.MlflowClient().update_run(run_id, name=describe.run_name(requested, result.epochs_run, partial))
            except BaseException as exc:
                # Ctrl-C and SIGTERM (train.py turns it into an interrupt) are the user's: KILLED, as MLflow's UI says.
                mlflow.end_run(status="FAILED" if isinstance(exc, Exception) else "KILLED")
                raise
    finally:
        if render_pool is not None:
            render_pool.shutdown(cancel_futures=True)
    return RunSummary(
        run_id,
        report.test.accuracy,
        report.test.macro_f1,
        total_seconds,
        version,
        aliases,
        promoted,
        reason,
        photo_accuracy=report.photo_test.accuracy,
        epochs_run=result.epochs_run,
        epochs_planned=requested.epochs,
        budget_cut=outcome.cut,
        time_budget=requested.time_budget,
        warehouse_accuracy=comparison.challenger if comparison is not None else None,
    )


def _rendered(pending: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The real-surface validation and test photos and the unfamiliar test photos (None: not asked for)."""
    names = ("real_val", "real_test", photo_bench.UNFAMILIAR_TEST)
    return tuple(pending[n].result() if n in pending else None for n in names)  # type: ignore[return-value]


def _unfamiliar_tag(threshold: float | None) -> dict[str, str]:
    """The version tag the API and the nightly job read the unfamiliar threshold from (none: no score)."""
    return {} if threshold is None else {UNFAMILIAR_THRESHOLD_TAG: f"{threshold:.6g}"}


def _outcome(settings: Settings, train: Any, epochs_run: int, cut: bool, report: Any) -> describe.Outcome:
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
    log.info("warehouse test photos (%d): accuracy %.4f (champion: %s)", len(test), ours,
             "none" if champion is None else f"{champion:.4f}")  # fmt: skip
    return WarehouseComparison(len(test), ours, champion)
