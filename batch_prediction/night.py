"""One night of batch prediction: continue or start a run, score what is new, commit part by part, finalize.

Crash safety, by construction (see :mod:`batch_prediction.ledger` and :mod:`batch_prediction.outputs`):

1. a run's manifest (``ledger/.../<run-id>/_RUN.json``) is written before any output;
2. per batch: CSV part, drift part, then the Parquet part (the commit), then the ledger part;
3. finalize: summary.json, MLflow, ``_SUCCESS``, ``predictions/LATEST``, then ``_DONE`` in the ledger.

A later invocation that finds a run without ``_DONE`` CONTINUES it (same run id, same output folder, same
MLflow run): it rebuilds ledger parts missing for committed output parts, numbers new parts after the last
committed one (overwriting any uncommitted side files), and removes side files that never got their Parquet
part. So the committed parts of a version's runs hold every input exactly once, whatever was killed where.

:func:`run_night` is these steps, in order: :func:`open_run` (continue or start), :func:`select_inputs` (nothing
new: :func:`nothing_new`, and the night ends there, having written nothing), the engine (which loads the model),
:func:`record_start` (manifest, MLflow run), :func:`score_and_commit` (:func:`commit_batch` per batch) and
:func:`finalize` (summary, drift, MLflow, ``_SUCCESS``, ``LATEST``, ``_DONE``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from batch_prediction.engines import Engine
from batch_prediction.ledger import (
    Ledger,
    RunManifest,
    RunState,
    committed_parts,
    history,
    is_unchanged,
    ledger_table,
    select_todo,
)
from batch_prediction.outputs import (
    LATEST_KEY,
    RECORD_SCHEMA,
    Stamp,
    build_records,
    features_to_npz,
    latest_pointer,
    npz_to_features,
    parquet_to_table,
    part_name,
    read_latest,
    run_prefix,
    table_to_csv,
    table_to_parquet,
)
from batch_prediction.rescore import rescore_scope
from batch_prediction.summary import NightStats, concat_window, sample_indices
from common.progress import progress_bar
from common.resources import peak_rss_mb
from common.settings import Settings
from common.storage import ObjectInfo, Storage, join_key, sha256_hex
from inference.records import review_threshold_for, unfamiliar_threshold_for
from inference.versions import ModelInfo
from monitoring.audit import AuditPolicy, AuditSampler
from monitoring.drift import DriftConfig, evaluate_drift
from monitoring.features import item_features
from monitoring.nights import AUDIT, NEEDS_REVIEW
from monitoring.reference import load_reference_for_version

log = logging.getLogger(__name__)

EXPERIMENT = "batch-predictions"


@dataclass(frozen=True)
class NightOptions:
    input_prefix: str = "incoming/"
    batch_size: int = 1024
    rescore: bool = False
    rescore_scope: str = ""  # with rescore: "" (every input), a key prefix, or FROM..TO (ledger.rescore_scope)
    max_failure_rate: float = 0.05
    date: str | None = None
    engine: str = "local"
    drift_sample: int = 20_000
    experiment: str = EXPERIMENT
    log_every: int = 10


class Tracker(Protocol):
    """The night's MLflow run (:class:`batch_prediction.tracking.NightTracker`)."""

    def start(self, manifest: RunManifest, model: ModelInfo, *, resumed: bool) -> str: ...

    def finish(self, summary: dict[str, Any], *, failed: bool) -> None: ...


@dataclass
class OpenRun:
    """The run this invocation works on: a new one, or the latest unfinished one of this model version."""

    state: RunState  # its manifest (kept current) and its ledger parts (grows as batches are committed)
    runs: dict[str, RunState]  # every run of this model version, this one included
    resumed: bool
    routed_before: set[str] = field(default_factory=set)  # rescored keys a person already saw: not reviewed again

    @property
    def manifest(self) -> RunManifest:
        return self.state.manifest


@dataclass
class Tally:
    """What this invocation scored (the whole run's counts come from its committed parts)."""

    scored: int = 0
    failed: int = 0
    workers_rss_mb: float = 0.0  # the highest peak any loader process or scoring actor reported
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.scored + self.failed


@dataclass
class NightResult:
    run_id: str
    output_prefix: str
    output_uri: str
    summary: dict[str, Any]
    exit_code: int
    resumed: bool
    scored_now: int = 0
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_run_id(now: datetime) -> str:
    # Millisecond timestamps: run folders sort in start order.
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def is_input_key(key: str) -> bool:
    """Folder markers (keys ending in ``/``) are not inputs. Everything else is: what must not be read (hidden and
    temporary files among others) is quarantined with its reason by :func:`batch_prediction.reading.screen`."""
    return bool(key.rsplit("/", 1)[-1])


def _latest_unfinished(runs: dict[str, RunState]) -> RunState | None:
    pending = [s for s in runs.values() if not s.done]
    return max(pending, key=lambda s: (s.manifest.started_at, s.manifest.run_id), default=None)


def _resources(workers_rss_mb: float) -> dict[str, float]:
    cpu = psutil.Process().cpu_times()
    return {
        "peak_rss_mb": peak_rss_mb(),  # this process's own high-water mark (see common.resources)
        # Loader processes (local engine) or scoring actors (Ray): the largest peak any of them reported.
        "peak_rss_workers_mb": workers_rss_mb,
        # This process and its ended children (the loader workers); not Ray's worker processes.
        "cpu_seconds": cpu.user + cpu.system + cpu.children_user + cpu.children_system,
    }


def run_night(
    settings: Settings,
    options: NightOptions,
    *,
    storage: Storage,
    model: ModelInfo,
    make_engine: Callable[[ModelInfo], Engine],
    tracker: Tracker | None = None,
) -> NightResult:
    """Score every new input under ``options.input_prefix`` with ``model``; returns the night's result.

    A night with nothing new (every input already scored by a version of the model, no unfinished run to complete)
    writes nothing: no output folder, no MLflow run, one log line (:func:`nothing_new`); ``make_engine`` is not
    called.
    ``tracker`` is a :class:`batch_prediction.tracking.NightTracker` (or None to skip MLflow).
    """
    t0 = time.perf_counter()
    ledger = Ledger(storage, model.name, model.version)
    run = open_run(ledger, options, model, now=datetime.now(UTC))
    todo, skipped = select_inputs(storage, ledger, run)
    if not todo and not run.resumed:
        return nothing_new(storage, run.manifest, skipped)
    engine = make_engine(model)  # may load the model: only for a night with work, and before anything is written
    record_start(ledger, run, model, tracker)
    tally = score_and_commit(storage, ledger, run.state, engine, todo, settings=settings, options=options, model=model)
    return finalize(
        storage, ledger, run, model, runtime_of_engine(engine), tracker, settings=settings, options=options,
        skipped=skipped, tally=tally, started=t0,
    )  # fmt: skip


def runtime_of_engine(engine: Any) -> dict[str, Any]:
    """The runtime a night's engine scores with and, where it was chosen by measurement, how (inference.choice)."""
    return {"runtime": engine.runtime, "runtime_choice": getattr(engine, "runtime_choice", None)}


def open_run(ledger: Ledger, options: NightOptions, model: ModelInfo, *, now: datetime) -> OpenRun:
    """Continue the latest unfinished run of this model version, or start a new one.

    A continued run keeps its run id, output folder and input prefix; this invocation is added to its manifest, and
    the ledger parts a kill left missing (output part committed, ledger part not written) are rebuilt here, before
    anything is selected or scored. Nothing else is written: the manifest is recorded by :func:`record_start`.
    """
    runs = ledger.runs()
    state = _latest_unfinished(runs)
    if state is not None:
        manifest = state.manifest
        if options.input_prefix != manifest.input_prefix:
            log.warning("continuing run %s with its input prefix %r", manifest.run_id, manifest.input_prefix)
        repaired = ledger.reconcile(state)
        state.manifest = replace(
            manifest,
            rescore=manifest.rescore or options.rescore,
            rescore_scope=manifest.rescore_scope if manifest.rescore else options.rescore_scope,
            invocations=[*manifest.invocations, now.isoformat()],
        )
        log.info("continuing unfinished run %s (%d ledger part(s) repaired)", manifest.run_id, repaired)
        return OpenRun(state, runs, resumed=True)
    run_id = new_run_id(now)
    date = options.date or now.strftime("%Y-%m-%d")
    manifest = RunManifest(
        run_id=run_id,
        date=date,
        output_prefix=run_prefix(date, run_id),
        model_name=model.name,
        model_version=model.version,
        input_prefix=options.input_prefix,
        rescore=options.rescore,
        rescore_scope=options.rescore_scope if options.rescore else "",
        started_at=now.isoformat(),
        engine=options.engine,
        invocations=[now.isoformat()],
    )
    state = RunState(manifest, done=False, ledger_parts=set())
    runs[run_id] = state
    return OpenRun(state, runs, resumed=False)


def select_inputs(storage: Storage, ledger: Ledger, run: OpenRun) -> tuple[list[ObjectInfo], int]:
    """The run's inputs not scored yet, in key order, and how many were skipped as already scored.

    Already scored, unchanged since: by this run, or by any run of any version of the model (a promotion scores
    only what no version has scored) unless the input is in the rescore's scope. Rescored inputs that an earlier run
    scored are noted in ``run.routed_before``: they are not listed for review again.
    """
    manifest = run.manifest
    before = history(storage, manifest.model_name, exclude_run=manifest.run_id)
    own = ledger.entries([manifest.run_id], run.runs)
    listing = [i for i in storage.list(manifest.input_prefix, temporaries=True) if is_input_key(i.key)]
    if manifest.rescore:
        again = rescore_scope(manifest.rescore_scope, manifest.input_prefix)
        run.routed_before = {
            i.key
            for i in listing
            if again(i.key) and i.key in before and before[i.key].status == "scored" and is_unchanged(i, before[i.key])
        }
        before = {k: e for k, e in before.items() if not again(k)}
    todo, skipped = select_todo(listing, {**before, **own})
    if todo or run.resumed:  # else run_night says, in one line, that there is nothing new (nothing_new)
        log.info(
            "model %s v%s: %d new input(s) to score, %d already scored (run %s%s)",
            manifest.model_name,
            manifest.model_version,
            len(todo),
            skipped,
            manifest.run_id,
            f", rescoring {manifest.rescore_scope or 'every input'}" if manifest.rescore else "",
        )
    return todo, skipped


def nothing_new(storage: Storage, manifest: RunManifest, skipped: int) -> NightResult:
    """The result of a night with nothing to score: nothing is written, and one log line says so and names the last
    night that scored something (``predictions/LATEST``)."""
    latest = read_latest(storage)
    log.info(
        "nothing new under %s for %s v%s: %d input(s) already scored; no output folder, no MLflow run (the last "
        "night with work: %s)",
        manifest.input_prefix,
        manifest.model_name,
        manifest.model_version,
        skipped,
        latest or "none yet",
    )
    summary = {"status": "nothing_new", "scored": 0, "failed": 0, "skipped_already_scored": skipped}
    return NightResult(run_id="", output_prefix="", output_uri="", summary=summary, exit_code=0, resumed=False)


def record_start(ledger: Ledger, run: OpenRun, model: ModelInfo, tracker: Tracker | None) -> None:
    """Write the run's manifest before any output, and open (or re-open) the night's MLflow run.

    The manifest is written before the MLflow run exists: a kill between the two leaves a run the next invocation
    continues, and the tracker finds its MLflow run again by the ``batch.run_id`` tag. Then the manifest is written
    again with the MLflow run's id.
    """
    manifest = run.manifest
    if tracker is not None:
        ledger.write_manifest(manifest)
        manifest = replace(manifest, mlflow_run_id=tracker.start(manifest, model, resumed=run.resumed))
    ledger.write_manifest(manifest)
    run.state.manifest = manifest


def score_and_commit(
    storage: Storage,
    ledger: Ledger,
    state: RunState,
    engine: Engine,
    todo: Sequence[ObjectInfo],
    *,
    settings: Settings,
    options: NightOptions,
    model: ModelInfo,
) -> Tally:
    """Score ``todo`` batch by batch; commit each batch (:func:`commit_batch`) before the next is scored. A progress
    bar is drawn when stderr is a terminal; the log says how far it got every ``options.log_every`` batches.

    New parts are numbered after the last committed one, so a continued run overwrites the side files of the batch
    that was killed instead of adding to them.
    """
    manifest = state.manifest
    part = max(committed_parts(storage, manifest.output_prefix), default=-1) + 1
    tally = Tally()
    t_score = time.perf_counter()
    with progress_bar(len(todo), "batch") as bar:
        for n_batch, (batch, answer) in enumerate(engine.score(todo, options.batch_size), start=1):
            unfamiliar_threshold = unfamiliar_threshold_for(settings.unfamiliar_threshold, model)
            stamp = Stamp(
                model.name, model.version, manifest.run_id, datetime.now(UTC).isoformat(timespec="milliseconds")
            )
            records = build_records(batch, answer, stamp)
            probs = answer.scores.probs
            feats = item_features(batch.images, probs, _judged(records, unfamiliar_threshold)) if batch.keys else {}
            commit_batch(storage, ledger, state, part, records, feats, batch.infos)
            part += 1
            tally.scored += len(batch.keys)
            tally.failed += len(batch.failures)
            tally.workers_rss_mb = max(tally.workers_rss_mb, batch.loader_rss_mb)
            bar.update(len(batch))
            if n_batch % options.log_every == 0:  # the log's progress (the bar is for terminals only)
                rate = tally.processed / max(time.perf_counter() - t_score, 1e-9)
                log.info("%d/%d items (%.0f items/s)", tally.processed, len(todo), rate)
    tally.seconds = time.perf_counter() - t_score
    return tally


def _judged(records: pa.Table, threshold: float | None) -> np.ndarray:
    """Per scored item 1.0 / 0.0 unfamiliar or not, NaN when not judged (no score or no threshold): the drift
    window's share of unfamiliar items."""
    scored = records.filter(pc.equal(records.column("status"), "scored"))
    flags = np.asarray(scored.column("unfamiliar").to_numpy(zero_copy_only=False), dtype=np.float64)
    if threshold is None:
        return np.full(len(flags), np.nan)
    known = np.asarray(scored.column("unfamiliarity").is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(known, flags, np.nan)


def commit_batch(
    storage: Storage,
    ledger: Ledger,
    state: RunState,
    part: int,
    records: pa.Table,
    features: dict[str, np.ndarray],
    infos: dict[str, ObjectInfo],
) -> None:
    """Write one batch as output part ``part``: CSV, drift features, then the Parquet part (the commit), then its
    ledger part. A kill before the Parquet part leaves side files that are overwritten or removed later; a kill
    after it, a ledger part that the next invocation rebuilds (:meth:`Ledger.reconcile`)."""
    # Every file of the night is durable (fsynced with its folder): after a power cut a committed part, or a side
    # file that finalize reads, must not come back empty and fail every later night.
    out = state.manifest.output_prefix
    storage.put_bytes(join_key(out, part_name("csv", part)), table_to_csv(records), durable=True)
    storage.put_bytes(join_key(out, part_name("_drift", part)), features_to_npz(features), durable=True)
    storage.put_bytes(join_key(out, part_name("parquet", part)), table_to_parquet(records), durable=True)
    ledger.write_part(state.manifest.run_id, part, ledger_table(records, infos))
    state.ledger_parts.add(part)


def finalize(
    storage: Storage,
    ledger: Ledger,
    run: OpenRun,
    model: ModelInfo,
    runtime: dict[str, Any],
    tracker: Tracker | None,
    *,
    settings: Settings,
    options: NightOptions,
    skipped: int,
    tally: Tally,
    started: float,
) -> NightResult:
    """Summarize the run from its committed parts, report it to MLflow, then mark it done: ``_SUCCESS`` in the
    output folder, ``_DONE`` in the ledger.

    Idempotent: everything is recomputed from the committed parts, so a kill anywhere here is redone by the next
    invocation. Writes killed mid-way leave temp files; the run lock makes this process the only writer of both
    folders, so they (and side files whose Parquet part never came) can be removed first.
    """
    manifest = run.manifest
    storage.remove_temporaries(manifest.output_prefix)
    storage.remove_temporaries(ledger.run_prefix(manifest.run_id))
    remove_orphans(storage, manifest.output_prefix)
    seed = int(sha256_hex(manifest.run_id.encode())[:8], 16)
    audit = AuditSampler(audit_policy(settings), seed=manifest.run_id)
    stats, window = aggregate(
        storage, manifest.output_prefix, options.drift_sample, seed=seed, routed=run.routed_before, audit=audit
    )
    output = f"{storage.uri.rstrip('/')}/{manifest.output_prefix}"
    resources = _resources(tally.workers_rss_mb)
    wall_seconds = time.perf_counter() - started
    summary = night_summary(
        manifest, model, runtime, settings=settings, options=options, output=output, resumed=run.resumed,
        stats=stats, skipped=skipped, tally=tally, wall_seconds=wall_seconds, resources=resources,
    )  # fmt: skip
    summary["drift"] = evaluate_night_drift(model, settings.mlflow_tracking_uri, window)
    exit_code = 1 if summary["failure_rate"] > options.max_failure_rate else 0
    summary["status"] = "failure_rate_exceeded" if exit_code else "ok"
    storage.put_bytes(
        join_key(manifest.output_prefix, "summary.json"),
        json.dumps(summary, indent=2).encode(),
        content_type="application/json",
        durable=True,
    )
    if tracker is not None:
        tracker.finish(summary, failed=bool(exit_code))
    storage.put_bytes(join_key(manifest.output_prefix, "_SUCCESS"), b"", durable=True)
    storage.put_bytes(LATEST_KEY, latest_pointer(manifest.output_prefix), content_type="text/plain", durable=True)
    ledger.mark_done(manifest.run_id)
    log.info(
        "run %s done: %d scored, %d failed (%d this invocation), %d skipped; %d need review; output %s",
        manifest.run_id,
        stats.scored,
        stats.failed,
        tally.processed,
        skipped,
        stats.needs_review,
        summary["output"],
    )
    return NightResult(
        run_id=manifest.run_id,
        output_prefix=manifest.output_prefix,
        output_uri=summary["output"],
        summary=summary,
        exit_code=exit_code,
        resumed=run.resumed,
        scored_now=tally.scored,
        mlflow_run_id=manifest.mlflow_run_id,
    )


def night_summary(
    manifest: RunManifest,
    model: ModelInfo,
    runtime: dict[str, Any],
    *,
    settings: Settings,
    options: NightOptions,
    output: str,
    resumed: bool,
    stats: NightStats,
    skipped: int,
    tally: Tally,
    wall_seconds: float,
    resources: dict[str, float],
) -> dict[str, Any]:
    """The night's ``summary.json`` (without drift and status, which finalize adds). Pure."""
    return {
        "run_id": manifest.run_id,
        "date": manifest.date,
        "model": {
            "name": model.name,
            "version": model.version,
            "uri": model.uri,
            "run_id": model.run_id,
            **runtime,
        },
        "input_prefix": manifest.input_prefix,
        "output": output,
        "engine": options.engine,
        "rescore": manifest.rescore,
        "rescore_scope": (manifest.rescore_scope or "all") if manifest.rescore else None,
        "resumed": resumed,
        "invocations": manifest.invocations,
        "review_threshold": review_threshold_for(settings.review_threshold, model),
        "unfamiliar_threshold": unfamiliar_threshold_for(settings.unfamiliar_threshold, model),
        **stats.to_dict(),
        "skipped_already_scored": skipped,
        "this_invocation": {
            "processed": tally.processed,
            "scored": tally.scored,
            "failed": tally.failed,
            "scoring_seconds": round(tally.seconds, 3),
            "throughput_items_per_s": round(tally.processed / tally.seconds, 1)
            if tally.processed and tally.seconds
            else 0.0,
            "wall_seconds": round(wall_seconds, 3),
            **{k: round(v, 1) for k, v in resources.items()},
        },
        "max_failure_rate": options.max_failure_rate,
        "quarantine": "quarantine.csv",
        "needs_review_list": NEEDS_REVIEW,
        "audit_list": AUDIT,
    }


def audit_policy(settings: Settings) -> AuditPolicy:
    """The night's audit sample policy (``AUDIT_SHARE``, ``AUDIT_MIN``, ``AUDIT_MAX``)."""
    loop = settings.learning
    return AuditPolicy(share=loop.audit_share, minimum=loop.audit_min, maximum=loop.audit_max)


def remove_orphans(storage: Storage, output_prefix: str) -> int:
    """Delete CSV / drift side files whose Parquet part was never committed (left by a killed batch)."""
    committed = set(committed_parts(storage, output_prefix))
    removed = 0
    for kind in ("csv", "_drift"):
        for info in storage.list(join_key(output_prefix, kind) + "/"):
            name = info.key.rsplit("/", 1)[-1]
            num = name.removeprefix("part-").split(".", 1)[0]
            if num.isdigit() and int(num) not in committed:
                storage.delete(info.key)
                removed += 1
    return removed


def aggregate(
    storage: Storage,
    output_prefix: str,
    drift_sample: int,
    *,
    seed: int,
    routed: set[str] | None = None,
    audit: AuditSampler | None = None,
) -> tuple[NightStats, dict[str, np.ndarray]]:
    """Stream over a run's committed parts: statistics, needs_review.csv, quarantine.csv, the drift window, and
    with ``audit`` the audit sample of the auto-routed items (audit.csv). ``routed``: keys already routed by an
    earlier run (a rescore's new records), left out of needs_review.csv and the audit sample: nobody is sent an
    item again."""
    routed_keys = pa.array(sorted(routed or ()), type=pa.string())
    parts = committed_parts(storage, output_prefix)
    stats = NightStats()
    review, quarantine = [], []
    counts: dict[int, int] = {}
    for num in sorted(parts):
        records = parquet_to_table(storage.get_bytes(parts[num]))
        stats.add(records)
        ok = pc.equal(records.column("status"), "scored")
        counts[num] = int(pc.sum(ok).as_py() or 0)
        fresh = pc.and_(ok, pc.invert(pc.is_in(records.column("key"), value_set=routed_keys)))
        doubtful = pc.fill_null(records.column("needs_review"), False)
        review.append(records.filter(pc.and_(fresh, doubtful)))
        if audit is not None:
            audit.add(records.filter(pc.and_(fresh, pc.invert(doubtful))))
        quarantine.append(records.filter(pc.invert(ok)).select(["key", "sha256", "size", "error_code", "error"]))
    # The whole night is one drift window; a large night is subsampled uniformly to a bounded size.
    picks = sample_indices(sum(counts.values()), drift_sample, seed=seed)
    window_parts, offset = [], 0
    for num in sorted(parts):
        n = counts[num]
        sel = picks[(picks >= offset) & (picks < offset + n)] - offset
        offset += n
        if len(sel):
            feats = npz_to_features(storage.get_bytes(join_key(output_prefix, part_name("_drift", num))))
            window_parts.append({k: v[sel] for k, v in feats.items()})
    # Parts written before the unfamiliarity columns existed (a night continued across the upgrade) lack them
    review_t = pa.concat_tables(review, promote_options="default") if review else RECORD_SCHEMA.empty_table()
    q_schema = pa.schema([RECORD_SCHEMA.field(n) for n in ("key", "sha256", "size", "error_code", "error")])
    quarantine_t = pa.concat_tables(quarantine) if quarantine else q_schema.empty_table()
    review_csv, quarantine_csv = table_to_csv(review_t), table_to_csv(quarantine_t)
    storage.put_bytes(join_key(output_prefix, NEEDS_REVIEW), review_csv, content_type="text/csv", durable=True)
    if audit is not None:
        audit_csv = table_to_csv(audit.table(RECORD_SCHEMA))
        storage.put_bytes(join_key(output_prefix, AUDIT), audit_csv, content_type="text/csv", durable=True)
        stats.audit_sample = audit.policy.size(audit.seen)
    storage.put_bytes(join_key(output_prefix, "quarantine.csv"), quarantine_csv, content_type="text/csv", durable=True)
    return stats, concat_window(window_parts)


def evaluate_night_drift(model: ModelInfo, tracking_uri: str, window: dict[str, np.ndarray]) -> dict[str, Any]:
    """The night's window against the served version's reference (monitoring.drift); never fails the night."""
    n = len(next(iter(window.values()))) if window else 0
    try:
        reference = load_reference_for_version(model.name, model.version, tracking_uri)
    except Exception as exc:
        return {"status": "unavailable", "reason": f"no drift reference for v{model.version}: {exc}", "window_size": n}
    try:
        report = evaluate_drift(reference, window, DriftConfig()).to_dict()
    except Exception as exc:
        log.exception("drift evaluation failed")
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "window_size": n}
    report.setdefault("window_size", n)
    return report
