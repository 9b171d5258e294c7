"""One night of batch prediction: continue or start a run, score what is new, commit part by part, finalize.

Crash safety, by construction (see :mod:`batch_prediction.ledger` and :mod:`batch_prediction.outputs`):

1. a run's manifest (``ledger/.../<run-id>/_RUN.json``) is written before any output;
2. per batch: CSV part, drift part, then the Parquet part (the commit), then the ledger part;
3. finalize: summary.json, MLflow, ``_SUCCESS``, ``predictions/LATEST``, then ``_DONE`` in the ledger.

A later invocation that finds a run without ``_DONE`` CONTINUES it (same run id, same output folder, same
MLflow run): it rebuilds ledger parts missing for committed output parts, numbers new parts after the last
committed one (overwriting any uncommitted side files), and removes side files that never got their Parquet
part. So the committed parts of a version's runs hold every input exactly once, whatever was killed where.

A night is a :class:`Night`: the store, the model version's ledger, the open run, the model, the settings, the
night's options and the tally of this invocation are its attributes, and its steps are its methods, in this file in
the order they run. :func:`run_night` reads forward: :meth:`Night.open` (continue or start),
:meth:`Night.select_inputs` (nothing new: :meth:`Night.nothing_new`, and the night ends there, having written
nothing), the engine (which loads the model), :meth:`Night.record_start` (manifest, MLflow run),
:meth:`Night.score_and_commit` (:meth:`Night.commit_batch` per batch) and :meth:`Night.finalize` (lists, summary,
drift, MLflow, ``_SUCCESS``, ``LATEST``, ``_DONE``). The pure parts (the new or continued manifest, the input
selection, the summary) are functions and methods that write nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from batch_prediction.engines import Engine, LoadedBatch
from batch_prediction.ledger import (
    Ledger,
    LedgerEntry,
    RunManifest,
    RunState,
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
    committed_parts,
    features_to_npz,
    latest_pointer,
    npz_to_features,
    parquet_to_table,
    part_name,
    read_latest,
    remove_orphans,
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
from inference.classifier import ColumnAnswer
from inference.records import review_threshold_for, unfamiliar_threshold_for
from inference.versions import ModelInfo
from monitoring.audit import AuditPolicy, AuditSampler
from monitoring.drift import DriftConfig, evaluate_drift
from monitoring.features import item_features
from monitoring.nights import AUDIT, NEEDS_REVIEW
from monitoring.reference import load_reference_for_version

log = logging.getLogger(__name__)

EXPERIMENT = "batch-predictions"
QUARANTINE = "quarantine.csv"
_QUARANTINE_COLUMNS = ("key", "sha256", "size", "error_code", "error")


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
    """The night's MLflow run (:class:`batch_prediction.night_runs.NightTracker`)."""

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
    """What this invocation found and scored (the whole run's counts come from its committed parts)."""

    skipped: int = 0  # inputs already scored (unchanged since), left alone
    scored: int = 0
    failed: int = 0
    workers_rss_mb: float = 0.0  # the highest peak any loader process or scoring actor reported
    seconds: float = 0.0  # scoring time

    @property
    def processed(self) -> int:
        return self.scored + self.failed

    def add(self, batch: LoadedBatch) -> None:
        self.scored += len(batch.keys)
        self.failed += len(batch.failures)
        self.workers_rss_mb = max(self.workers_rss_mb, batch.loader_rss_mb)

    def to_dict(self, wall_seconds: float, resources: dict[str, float]) -> dict[str, float]:
        """summary.json's ``this_invocation``. Pure."""
        throughput = round(self.processed / self.seconds, 1) if self.processed and self.seconds else 0.0
        return {
            "processed": self.processed,
            "scored": self.scored,
            "failed": self.failed,
            "scoring_seconds": round(self.seconds, 3),
            "throughput_items_per_s": throughput,
            "wall_seconds": round(wall_seconds, 3),
            **{k: round(v, 1) for k, v in resources.items()},
        }


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
    writes nothing: no output folder, no MLflow run, one log line (:meth:`Night.nothing_new`); ``make_engine`` is
    not called.
    ``tracker`` is a :class:`batch_prediction.night_runs.NightTracker` (or None to skip MLflow).
    """
    night = Night.open(settings, options, storage=storage, model=model, tracker=tracker)
    todo = night.select_inputs()
    if not todo and not night.run.resumed:
        return night.nothing_new()
    engine = make_engine(model)  # may load the model: only for a night with work, and before anything is written
    night.record_start()
    night.score_and_commit(engine, todo)
    return night.finalize(runtime_of_engine(engine))


@dataclass
class Night:
    """One invocation of the nightly job on one run of one model version (see the module docstring)."""

    storage: Storage
    ledger: Ledger  # of the model's version, in ``storage``
    run: OpenRun
    model: ModelInfo
    settings: Settings
    options: NightOptions
    tally: Tally = field(default_factory=Tally)
    tracker: Tracker | None = None
    started: float = field(default_factory=time.perf_counter)  # perf_counter at open: the night's wall time

    @classmethod
    def open(
        cls, settings: Settings, options: NightOptions, *, storage: Storage, model: ModelInfo, tracker: Tracker | None
    ) -> Night:
        """Continue the latest unfinished run of this model version, or start a new one.

        A continued run keeps its run id, output folder and input prefix; this invocation is added to its manifest,
        and the ledger parts a kill left missing (output part committed, ledger part not written) are rebuilt here,
        before anything is selected or scored. Nothing else is written: the manifest is recorded by
        :meth:`record_start`.
        """
        started, now = time.perf_counter(), datetime.now(UTC)
        ledger = Ledger(storage, model.name, model.version)
        runs = ledger.runs()
        state = latest_unfinished(runs)
        resumed = state is not None
        if state is None:
            manifest = new_manifest(options, model, now)
            state = runs[manifest.run_id] = RunState(manifest, done=False, ledger_parts=set())
        else:
            manifest = state.manifest
            if options.input_prefix != manifest.input_prefix:
                log.warning("continuing run %s with its input prefix %r", manifest.run_id, manifest.input_prefix)
            repaired = ledger.reconcile(state)
            state.manifest = continued_manifest(manifest, options, now)
            log.info("continuing unfinished run %s (%d ledger part(s) repaired)", manifest.run_id, repaired)
        run = OpenRun(state, runs, resumed=resumed)
        return cls(storage, ledger, run, model, settings, options, tracker=tracker, started=started)

    @property
    def manifest(self) -> RunManifest:
        return self.run.manifest

    def select_inputs(self) -> list[ObjectInfo]:
        """The run's inputs not scored yet, in key order (``tally.skipped``: how many were already scored).

        Already scored, unchanged since: by this run, or by any run of any version of the model (a promotion scores
        only what no version has scored) unless the input is in the rescore's scope. Rescored inputs that an earlier
        run scored are noted in ``run.routed_before``: they are not listed for review again.
        """
        manifest = self.manifest
        before = history(self.storage, manifest.model_name, exclude_run=manifest.run_id)
        own = self.ledger.entries([manifest.run_id], self.run.runs)
        listing = [i for i in self.storage.list(manifest.input_prefix, temporaries=True) if is_input_key(i.key)]
        if manifest.rescore:
            again = rescore_scope(manifest.rescore_scope, manifest.input_prefix)
            self.run.routed_before = already_routed(listing, before, again)
            before = {k: e for k, e in before.items() if not again(k)}
        todo, self.tally.skipped = select_todo(listing, {**before, **own})
        if todo or self.run.resumed:  # else run_night says, in one line, that there is nothing new (nothing_new)
            log.info(
                "model %s v%s: %d new input(s) to score, %d already scored (run %s%s)",
                manifest.model_name,
                manifest.model_version,
                len(todo),
                self.tally.skipped,
                manifest.run_id,
                f", rescoring {manifest.rescore_scope or 'every input'}" if manifest.rescore else "",
            )
        return todo

    def nothing_new(self) -> NightResult:
        """The result of a night with nothing to score: nothing is written, and one log line says so and names the
        last night that scored something (``predictions/LATEST``)."""
        manifest, skipped = self.manifest, self.tally.skipped
        log.info(
            "nothing new under %s for %s v%s: %d input(s) already scored; no output folder, no MLflow run (the last "
            "night with work: %s)",
            manifest.input_prefix,
            manifest.model_name,
            manifest.model_version,
            skipped,
            read_latest(self.storage) or "none yet",
        )
        summary = {"status": "nothing_new", "scored": 0, "failed": 0, "skipped_already_scored": skipped}
        return NightResult(run_id="", output_prefix="", output_uri="", summary=summary, exit_code=0, resumed=False)

    def record_start(self) -> None:
        """Write the run's manifest before any output, and open (or re-open) the night's MLflow run.

        The manifest is written before the MLflow run exists: a kill between the two leaves a run the next invocation
        continues, and the tracker finds its MLflow run again by the ``batch.run_id`` tag. Then the manifest is
        written again with the MLflow run's id.
        """
        manifest = self.manifest
        if self.tracker is not None:
            self.ledger.write_manifest(manifest)
            mlflow_run_id = self.tracker.start(manifest, self.model, resumed=self.run.resumed)
            manifest = replace(manifest, mlflow_run_id=mlflow_run_id)
        self.ledger.write_manifest(manifest)
        self.run.state.manifest = manifest

    def score_and_commit(self, engine: Engine, todo: Sequence[ObjectInfo]) -> None:
        """Score ``todo`` batch by batch; commit each batch (:meth:`commit_batch`) before the next is scored. A
        progress bar is drawn when stderr is a terminal; the log says how far it got every ``options.log_every``
        batches.

        New parts are numbered after the last committed one, so a continued run overwrites the side files of the
        batch that was killed instead of adding to them. Since :meth:`open` the run's ledger parts are its committed
        output parts (:meth:`Ledger.reconcile` rebuilt the missing ones), so they are not listed again here.
        """
        part = max(self.run.state.ledger_parts, default=-1) + 1
        t_score = time.perf_counter()
        with progress_bar(len(todo), "batch") as bar:
            for n_batch, (batch, answer) in enumerate(engine.score(todo, self.options.batch_size), start=1):
                records = self.records(batch, answer)
                self.commit_batch(part, records, self.drift_features(batch, answer, records), batch.infos)
                part += 1
                self.tally.add(batch)
                bar.update(len(batch))
                if n_batch % self.options.log_every == 0:  # the log's progress (the bar is for terminals only)
                    rate = self.tally.processed / max(time.perf_counter() - t_score, 1e-9)
                    log.info("%d/%d items (%.0f items/s)", self.tally.processed, len(todo), rate)
        self.tally.seconds = time.perf_counter() - t_score

    def records(self, batch: LoadedBatch, answer: ColumnAnswer) -> pa.Table:
        """One batch's output rows (:func:`batch_prediction.outputs.build_records`). Pure but for the clock."""
        stamp = Stamp(
            self.model.name,
            self.model.version,
            self.manifest.run_id,
            datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        return build_records(batch, answer, stamp)

    def drift_features(self, batch: LoadedBatch, answer: ColumnAnswer, records: pa.Table) -> dict[str, np.ndarray]:
        """The per-item drift features of one batch's scored items (monitoring.features). Pure."""
        if not batch.keys:
            return {}
        return item_features(batch.images, answer.scores.probs, judged(records, self.unfamiliar_threshold))

    @property
    def unfamiliar_threshold(self) -> float | None:
        return unfamiliar_threshold_for(self.settings.unfamiliar_threshold, self.model)

    def commit_batch(
        self, part: int, records: pa.Table, features: dict[str, np.ndarray], infos: dict[str, ObjectInfo]
    ) -> None:
        """Write one batch as output part ``part``: CSV, drift features, then the Parquet part (the commit), then its
        ledger part. A kill before the Parquet part leaves side files that are overwritten or removed later; a kill
        after it, a ledger part that the next invocation rebuilds (:meth:`Ledger.reconcile`)."""
        # Every file of the night is durable (fsynced with its folder): after a power cut a committed part, or a side
        # file that finalize reads, must not come back empty and fail every later night.
        out = self.manifest.output_prefix
        self.storage.put_bytes(join_key(out, part_name("csv", part)), table_to_csv(records), durable=True)
        self.storage.put_bytes(join_key(out, part_name("_drift", part)), features_to_npz(features), durable=True)
        self.storage.put_bytes(join_key(out, part_name("parquet", part)), table_to_parquet(records), durable=True)
        self.ledger.write_part(self.manifest.run_id, part, ledger_table(records, infos))
        self.run.state.ledger_parts.add(part)

    def finalize(self, runtime: dict[str, object]) -> NightResult:
        """Summarize the run from its committed parts, report it to MLflow, then mark it done: ``_SUCCESS`` in the
        output folder, ``_DONE`` in the ledger.

        Idempotent: everything is recomputed from the committed parts, so a kill anywhere here is redone by the next
        invocation.
        """
        self.remove_leftovers()
        stats, window = self.aggregate()
        usage = self.tally.to_dict(time.perf_counter() - self.started, resources(self.tally.workers_rss_mb))
        summary = self.summary(stats, runtime, usage)
        summary["drift"] = self.evaluate_drift(window)
        failed = summary["failure_rate"] > self.options.max_failure_rate
        summary["status"] = "failure_rate_exceeded" if failed else "ok"
        self.publish(summary, failed=failed)
        return NightResult(
            run_id=self.manifest.run_id,
            output_prefix=self.manifest.output_prefix,
            output_uri=summary["output"],
            summary=summary,
            exit_code=1 if failed else 0,
            resumed=self.run.resumed,
            scored_now=self.tally.scored,
            mlflow_run_id=self.manifest.mlflow_run_id,
        )

    def remove_leftovers(self) -> None:
        """Remove what writes killed mid-way left: temp files in the output and ledger folders, and side files whose
        Parquet part never came. The run lock makes this process the only writer of both folders."""
        self.storage.remove_temporaries(self.manifest.output_prefix)
        self.storage.remove_temporaries(self.ledger.run_prefix(self.manifest.run_id))
        remove_orphans(self.storage, self.manifest.output_prefix)

    def aggregate(self) -> tuple[NightStats, dict[str, np.ndarray]]:
        """Stream over the run's committed parts: statistics, needs_review.csv, quarantine.csv, audit.csv (a sample
        of the auto-routed items) and the drift window. Keys an earlier run already routed (a rescore's new records:
        ``run.routed_before``) are left out of needs_review.csv and the audit sample: nobody is sent an item again."""
        out = self.manifest.output_prefix
        parts = committed_parts(self.storage, out)
        lists = NightLists(self.run.routed_before, AuditSampler(audit_policy(self.settings), seed=self.manifest.run_id))
        for num in sorted(parts):
            lists.add(num, parquet_to_table(self.storage.get_bytes(parts[num])))
        for name, table in lists.tables().items():
            self.storage.put_bytes(join_key(out, name), table_to_csv(table), content_type="text/csv", durable=True)
        return lists.stats, self.drift_window(lists.scored_per_part)

    def drift_window(self, scored_per_part: dict[int, int]) -> dict[str, np.ndarray]:
        """The whole night is one drift window; a large night is subsampled uniformly (seeded by the run id) to
        ``options.drift_sample`` items."""
        seed = int(sha256_hex(self.manifest.run_id.encode())[:8], 16)
        picks = sample_indices(sum(scored_per_part.values()), self.options.drift_sample, seed=seed)
        window_parts, offset = [], 0
        for num in sorted(scored_per_part):
            n = scored_per_part[num]
            sel = picks[(picks >= offset) & (picks < offset + n)] - offset
            offset += n
            if len(sel):
                key = join_key(self.manifest.output_prefix, part_name("_drift", num))
                feats = npz_to_features(self.storage.get_bytes(key))
                window_parts.append({k: v[sel] for k, v in feats.items()})
        return concat_window(window_parts)

    def summary(self, stats: NightStats, runtime: dict[str, object], usage: dict[str, float]) -> dict[str, Any]:
        """The night's ``summary.json`` (without drift and status, which finalize adds). Pure."""
        manifest, model = self.manifest, self.model
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
            "output": f"{self.storage.uri.rstrip('/')}/{manifest.output_prefix}",
            "engine": self.options.engine,
            "rescore": manifest.rescore,
            "rescore_scope": (manifest.rescore_scope or "all") if manifest.rescore else None,
            "resumed": self.run.resumed,
            "invocations": manifest.invocations,
            "review_threshold": review_threshold_for(self.settings.review_threshold, model),
            "unfamiliar_threshold": self.unfamiliar_threshold,
            **stats.to_dict(),
            "skipped_already_scored": self.tally.skipped,
            "this_invocation": usage,
            "max_failure_rate": self.options.max_failure_rate,
            "quarantine": QUARANTINE,
            "needs_review_list": NEEDS_REVIEW,
            "audit_list": AUDIT,
        }

    def evaluate_drift(self, window: dict[str, np.ndarray]) -> dict[str, Any]:
        """The night's window against the served version's reference (monitoring.drift); never fails the night."""
        n = len(next(iter(window.values()))) if window else 0
        model = self.model
        try:
            reference = load_reference_for_version(model.name, model.version, self.settings.mlflow_tracking_uri)
        except Exception as exc:
            return {
                "status": "unavailable",
                "reason": f"no drift reference for v{model.version}: {exc}",
                "window_size": n,
            }
        try:
            report = evaluate_drift(reference, window, DriftConfig()).to_dict()
        except Exception as exc:
            log.exception("drift evaluation failed")
            return {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "window_size": n}
        report.setdefault("window_size", n)
        return report

    def publish(self, summary: dict[str, Any], *, failed: bool) -> None:
        """summary.json, the MLflow run's end, ``_SUCCESS``, ``predictions/LATEST``, then ``_DONE`` in the ledger: in
        this order, so a run marked done has every output."""
        out = self.manifest.output_prefix
        summary_json = json.dumps(summary, indent=2).encode()
        self.storage.put_bytes(
            join_key(out, "summary.json"), summary_json, content_type="application/json", durable=True
        )
        if self.tracker is not None:
            self.tracker.finish(summary, failed=failed)
        self.storage.put_bytes(join_key(out, "_SUCCESS"), b"", durable=True)
        self.storage.put_bytes(LATEST_KEY, latest_pointer(out), content_type="text/plain", durable=True)
        self.ledger.mark_done(self.manifest.run_id)
        log.info(
            "run %s done: %d scored, %d failed (%d this invocation), %d skipped; %d need review; output %s",
            self.manifest.run_id,
            summary["scored"],
            summary["failed"],
            self.tally.processed,
            self.tally.skipped,
            summary["needs_review"],
            summary["output"],
        )


class NightLists:
    """The lists people work from, gathered part by part over a run's committed records: needs_review.csv,
    audit.csv and quarantine.csv, with the night's statistics. Holds the lists in memory; writes nothing."""

    def __init__(self, routed: set[str], audit: AuditSampler) -> None:
        self.routed_keys = pa.array(sorted(routed), type=pa.string())
        self.audit = audit
        self.stats = NightStats()
        self.review: list[pa.Table] = []
        self.quarantine: list[pa.Table] = []
        self.scored_per_part: dict[int, int] = {}

    def add(self, num: int, records: pa.Table) -> None:
        self.stats.add(records)
        ok = pc.equal(records.column("status"), "scored")
        self.scored_per_part[num] = int(pc.sum(ok).as_py() or 0)
        fresh = pc.and_(ok, pc.invert(pc.is_in(records.column("key"), value_set=self.routed_keys)))
        doubtful = pc.fill_null(records.column("needs_review"), False)
        self.review.append(records.filter(pc.and_(fresh, doubtful)))
        self.audit.add(records.filter(pc.and_(fresh, pc.invert(doubtful))))
        self.quarantine.append(records.filter(pc.invert(ok)).select(list(_QUARANTINE_COLUMNS)))
        self.stats.audit_sample = self.audit.policy.size(self.audit.seen)

    def tables(self) -> dict[str, pa.Table]:
        """File name -> table, in the order they are written (needs_review.csv, audit.csv, quarantine.csv)."""
        # Parts written before the unfamiliarity columns existed (a night continued across the upgrade) lack them
        review = (
            pa.concat_tables(self.review, promote_options="default") if self.review else RECORD_SCHEMA.empty_table()
        )
        q_schema = pa.schema([RECORD_SCHEMA.field(n) for n in _QUARANTINE_COLUMNS])
        quarantine = pa.concat_tables(self.quarantine) if self.quarantine else q_schema.empty_table()
        return {NEEDS_REVIEW: review, AUDIT: self.audit.table(RECORD_SCHEMA), QUARANTINE: quarantine}


def new_run_id(now: datetime) -> str:
    # Millisecond timestamps: run folders sort in start order.
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def is_input_key(key: str) -> bool:
    """Folder markers (keys ending in ``/``) are not inputs. Everything else is: what must not be read (hidden and
    temporary files among others) is quarantined with its reason by :func:`batch_prediction.reading.screen`."""
    return bool(key.rsplit("/", 1)[-1])


def latest_unfinished(runs: dict[str, RunState]) -> RunState | None:
    """The run a new invocation continues: the latest started run without ``_DONE``. Pure."""
    pending = [s for s in runs.values() if not s.done]
    return max(pending, key=lambda s: (s.manifest.started_at, s.manifest.run_id), default=None)


def new_manifest(options: NightOptions, model: ModelInfo, now: datetime) -> RunManifest:
    """The manifest of a run started ``now``. Pure but for its random run id."""
    run_id = new_run_id(now)
    date = options.date or now.strftime("%Y-%m-%d")
    return RunManifest(
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


def continued_manifest(manifest: RunManifest, options: NightOptions, now: datetime) -> RunManifest:
    """A continued run's manifest: this invocation added; a rescore asked for now makes the run a rescore. Pure."""
    return replace(
        manifest,
        rescore=manifest.rescore or options.rescore,
        rescore_scope=manifest.rescore_scope if manifest.rescore else options.rescore_scope,
        invocations=[*manifest.invocations, now.isoformat()],
    )


def already_routed(
    listing: Sequence[ObjectInfo], before: Mapping[str, LedgerEntry], again: Callable[[str], bool]
) -> set[str]:
    """The keys a rescore scores ``again`` that an earlier run scored, unchanged since: a person already saw them
    (needs review or audit sample), so they are not listed again. Pure."""
    return {
        info.key
        for info in listing
        if again(info.key)
        and (entry := before.get(info.key)) is not None
        and entry.status == "scored"
        and is_unchanged(info, entry)
    }


def runtime_of_engine(engine: Engine) -> dict[str, object]:
    """The runtime a night's engine scores with and, where it was chosen by measurement, how (inference.choice)."""
    return {"runtime": engine.runtime, "runtime_choice": getattr(engine, "runtime_choice", None)}


def judged(records: pa.Table, threshold: float | None) -> np.ndarray:
    """Per scored item 1.0 / 0.0 unfamiliar or not, NaN when not judged (no score or no threshold): the drift
    window's share of unfamiliar items. Pure."""
    scored = records.filter(pc.equal(records.column("status"), "scored"))
    flags = np.asarray(scored.column("unfamiliar").to_numpy(zero_copy_only=False), dtype=np.float64)
    if threshold is None:
        return np.full(len(flags), np.nan)
    known = np.asarray(scored.column("unfamiliarity").is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(known, flags, np.nan)


def audit_policy(settings: Settings) -> AuditPolicy:
    """The night's audit sample policy (``AUDIT_SHARE``, ``AUDIT_MIN``, ``AUDIT_MAX``)."""
    loop = settings.learning
    return AuditPolicy(share=loop.audit_share, minimum=loop.audit_min, maximum=loop.audit_max)


def resources(workers_rss_mb: float) -> dict[str, float]:
    """This invocation's memory and CPU so far."""
    cpu = psutil.Process().cpu_times()
    return {
        "peak_rss_mb": peak_rss_mb(),  # this process's own high-water mark (see common.resources)
        # Loader processes (local engine) or scoring actors (Ray): the largest peak any of them reported.
        "peak_rss_workers_mb": workers_rss_mb,
        # This process and its ended children (the loader workers); not Ray's worker processes.
        "cpu_seconds": cpu.user + cpu.system + cpu.children_user + cpu.children_system,
    }
