"""One night of batch prediction: continue or start a run, score what is new, commit part by part, finalize.

Crash safety, by construction (see :mod:`batch_prediction.ledger` and :mod:`batch_prediction.outputs`):

1. a run's manifest (``ledger/.../<run-id>/_RUN.json``) is written before any output;
2. per batch: CSV part, drift part, then the Parquet part (the commit), then the ledger part;
3. finalize: summary.json, MLflow, ``_SUCCESS``, then ``_DONE`` in the ledger.

A later invocation that finds a run without ``_DONE`` CONTINUES it (same run id, same output folder, same
MLflow run): it rebuilds ledger parts missing for committed output parts, numbers new parts after the last
committed one (overwriting any uncommitted side files), and removes side files that never got their Parquet
part. So the committed parts of a version's runs hold every input exactly once, whatever was killed where.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psutil

from batch_prediction.engines import Engine
from batch_prediction.ledger import Ledger, RunManifest, RunState, committed_parts, ledger_table, select_todo
from batch_prediction.outputs import (
    build_records,
    features_to_npz,
    npz_to_features,
    parquet_to_table,
    part_name,
    run_prefix,
    table_to_csv,
    table_to_parquet,
)
from batch_prediction.summary import NightStats, concat_window, sample_indices
from common.resources import peak_rss_mb
from common.settings import Settings
from common.storage import Storage, join_key, sha256_hex
from inference.models import ModelInfo
from monitoring.features import item_features

log = logging.getLogger(__name__)

EXPERIMENT = "batch-predictions"
FAULT_ENV = "BATCH_FAULT"  # "<point>:<n>": SIGKILL this process at the n-th time it reaches <point> (tests)
FAULT_AFTER_BATCHES_ENV = "BATCH_FAULT_AFTER_BATCHES"  # shorthand for "after_ledger:<n>"
FAULT_POINTS = (
    "after_mlflow_run",
    "after_manifest",
    "before_part",
    "after_part",
    "after_ledger",
    "before_success",
    "before_done",
)


@dataclass(frozen=True)
class NightOptions:
    input_prefix: str = "incoming/"
    batch_size: int = 1024
    rescore: bool = False
    max_failure_rate: float = 0.05
    date: str | None = None
    engine: str = "local"
    drift_sample: int = 20_000
    experiment: str = EXPERIMENT
    log_every: int = 10


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


class _Faults:
    """Deterministic SIGKILL points for the crash tests (inactive unless the env var is set)."""

    def __init__(self) -> None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec and os.environ.get(FAULT_AFTER_BATCHES_ENV):
            spec = f"after_ledger:{os.environ[FAULT_AFTER_BATCHES_ENV]}"
        self.point, _, n = spec.partition(":")
        self.n = int(n or 1)
        self.seen = 0

    def reach(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.n:
                log.warning("fault injection: SIGKILL at %s #%d", point, self.n)
                os.kill(os.getpid(), signal.SIGKILL)


def new_run_id(now: datetime) -> str:
    # Millisecond timestamps: run folders sort in start order.
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def is_input_key(key: str) -> bool:
    """Folder markers and hidden files (``.DS_Store``) are not returns photos."""
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(".")


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
    tracker: Any | None = None,
) -> NightResult:
    """Score every new input under ``options.input_prefix`` with ``model``; returns the night's result.

    ``tracker`` is a :class:`batch_prediction.tracking.NightTracker` (or None to skip MLflow).
    """
    t0 = time.perf_counter()
    faults = _Faults()
    now = datetime.now(UTC)
    ledger = Ledger(storage, model.name, model.version)
    runs = ledger.runs()
    state = _latest_unfinished(runs)
    resumed = state is not None
    if state is not None:
        manifest = state.manifest
        if options.input_prefix != manifest.input_prefix:
            log.warning("continuing run %s with its input prefix %r", manifest.run_id, manifest.input_prefix)
        manifest = replace(
            manifest,
            rescore=manifest.rescore or options.rescore,
            invocations=[*manifest.invocations, now.isoformat()],
        )
        repaired = ledger.reconcile(state)
        log.info("continuing unfinished run %s (%d ledger part(s) repaired)", manifest.run_id, repaired)
    else:
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
            started_at=now.isoformat(),
            engine=options.engine,
            invocations=[now.isoformat()],
        )
        state = RunState(manifest, done=False, ledger_parts=set())
        runs[manifest.run_id] = state

    # What counts as done: every run of this version, or (rescoring) only this run.
    relevant = [manifest.run_id] if manifest.rescore else list(runs)
    done = ledger.entries(relevant, runs)
    listing = (i for i in storage.list(manifest.input_prefix) if is_input_key(i.key))
    todo, skipped = select_todo(listing, done)
    log.info(
        "model %s v%s: %d new input(s) to score, %d already scored (run %s)",
        model.name,
        model.version,
        len(todo),
        skipped,
        manifest.run_id,
    )

    if tracker is not None:
        # The manifest is written before the MLflow run exists: a kill between the two leaves a run the next
        # invocation continues, and the tracker finds its MLflow run again by the batch.run_id tag.
        ledger.write_manifest(manifest)
        manifest = replace(manifest, mlflow_run_id=tracker.start(manifest, model, resumed=resumed))
        faults.reach("after_mlflow_run")
    ledger.write_manifest(manifest)
    state.manifest = manifest
    faults.reach("after_manifest")

    committed = committed_parts(storage, manifest.output_prefix)
    part = max(committed, default=-1) + 1
    scored_now = failed_now = 0
    workers_rss = 0.0
    t_score = time.perf_counter()
    engine = make_engine(model)
    for n_batch, (batch, probs) in enumerate(engine.score(todo, options.batch_size), start=1):
        records = build_records(
            keys=batch.keys,
            shas=batch.shas,
            sizes=batch.sizes,
            probs=probs,
            failures=batch.failures,
            review_threshold=settings.review_threshold,
            model_name=model.name,
            model_version=model.version,
            run_id=manifest.run_id,
            scored_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        feats = item_features(batch.images, probs) if batch.keys else {}
        # Every file of the night is durable (fsynced with its folder): after a power cut a committed part, or a
        # side file that finalize reads, must not come back empty and fail every later night.
        out = manifest.output_prefix
        storage.put_bytes(join_key(out, part_name("csv", part)), table_to_csv(records), durable=True)
        storage.put_bytes(join_key(out, part_name("_drift", part)), features_to_npz(feats), durable=True)
        faults.reach("before_part")
        storage.put_bytes(join_key(out, part_name("parquet", part)), table_to_parquet(records), durable=True)
        faults.reach("after_part")
        ledger.write_part(manifest.run_id, part, ledger_table(records, batch.infos))
        state.ledger_parts.add(part)
        faults.reach("after_ledger")
        part += 1
        scored_now += len(batch.keys)
        workers_rss = max(workers_rss, batch.loader_rss_mb)
        failed_now += len(batch.failures)
        if n_batch % options.log_every == 0:
            rate = (scored_now + failed_now) / max(time.perf_counter() - t_score, 1e-9)
            log.info("%d/%d items (%.0f items/s)", scored_now + failed_now, len(todo), rate)
    scoring_s = time.perf_counter() - t_score

    # ---- finalize (idempotent: a kill anywhere below is redone by the next invocation) ----
    # Writes killed mid-way leave temp files; the run lock makes this process the only writer of both folders.
    storage.remove_temporaries(manifest.output_prefix)
    storage.remove_temporaries(ledger.run_prefix(manifest.run_id))
    remove_orphans(storage, manifest.output_prefix)
    stats, window = aggregate(
        storage, manifest.output_prefix, options.drift_sample, seed=int(sha256_hex(manifest.run_id.encode())[:8], 16)
    )
    processed_now = scored_now + failed_now
    summary: dict[str, Any] = {
        "run_id": manifest.run_id,
        "date": manifest.date,
        "model": {
            "name": model.name,
            "version": model.version,
            "uri": model.uri,
            "run_id": model.run_id,
            "runtime": engine.runtime,
        },
        "input_prefix": manifest.input_prefix,
        "output": f"{storage.uri.rstrip('/')}/{manifest.output_prefix}",
        "engine": options.engine,
        "rescore": manifest.rescore,
        "resumed": resumed,
        "invocations": manifest.invocations,
        "review_threshold": settings.review_threshold,
        **stats.to_dict(),
        "skipped_already_scored": skipped,
        "this_invocation": {
            "processed": processed_now,
            "scored": scored_now,
            "failed": failed_now,
            "scoring_seconds": round(scoring_s, 3),
            "throughput_items_per_s": round(processed_now / scoring_s, 1) if processed_now and scoring_s else 0.0,
            "wall_seconds": round(time.perf_counter() - t0, 3),
            **{k: round(v, 1) for k, v in _resources(workers_rss).items()},
        },
        "max_failure_rate": options.max_failure_rate,
        "quarantine": "quarantine.csv",
        "needs_review_list": "needs_review.csv",
    }
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
    faults.reach("before_success")
    storage.put_bytes(join_key(manifest.output_prefix, "_SUCCESS"), b"", durable=True)
    faults.reach("before_done")
    ledger.mark_done(manifest.run_id)
    log.info(
        "run %s done: %d scored, %d failed (%d this invocation), %d skipped; %d need review; output %s",
        manifest.run_id,
        stats.scored,
        stats.failed,
        processed_now,
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
        resumed=resumed,
        scored_now=scored_now,
        mlflow_run_id=manifest.mlflow_run_id,
    )


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
    storage: Storage, output_prefix: str, drift_sample: int, *, seed: int
) -> tuple[NightStats, dict[str, np.ndarray]]:
    """Stream over a run's committed parts: statistics, needs_review.csv, quarantine.csv, the drift window."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = committed_parts(storage, output_prefix)
    stats = NightStats()
    review, quarantine = [], []
    counts: dict[int, int] = {}
    for num in sorted(parts):
        records = parquet_to_table(storage.get_bytes(parts[num]))
        stats.add(records)
        ok = pc.equal(records.column("status"), "scored")
        counts[num] = int(pc.sum(ok).as_py() or 0)
        review.append(records.filter(pc.and_(ok, pc.fill_null(records.column("needs_review"), False))))
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
    from batch_prediction.outputs import RECORD_SCHEMA

    review_t = pa.concat_tables(review) if review else RECORD_SCHEMA.empty_table()
    q_schema = pa.schema([RECORD_SCHEMA.field(n) for n in ("key", "sha256", "size", "error_code", "error")])
    quarantine_t = pa.concat_tables(quarantine) if quarantine else q_schema.empty_table()
    review_csv, quarantine_csv = table_to_csv(review_t), table_to_csv(quarantine_t)
    storage.put_bytes(join_key(output_prefix, "needs_review.csv"), review_csv, content_type="text/csv", durable=True)
    storage.put_bytes(join_key(output_prefix, "quarantine.csv"), quarantine_csv, content_type="text/csv", durable=True)
    return stats, concat_window(window_parts)


def evaluate_night_drift(model: ModelInfo, tracking_uri: str, window: dict[str, np.ndarray]) -> dict[str, Any]:
    """The night's window against the served version's reference (monitoring.drift); never fails the night."""
    n = len(next(iter(window.values()))) if window else 0
    try:
        from monitoring.drift import DriftConfig, evaluate_drift
    except ImportError as exc:
        return {"status": "unavailable", "reason": f"monitoring.drift not importable: {exc}", "window_size": n}
    try:
        from monitoring.reference import load_reference_for_version

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
