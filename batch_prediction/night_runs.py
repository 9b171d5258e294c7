"""The nightly job's MLflow runs: one per night in the ``batch-predictions`` experiment (never per image), opened,
re-opened after a kill, described and ended by :class:`NightTracker`; the metrics it logs come from the night's
summary.json. (The MLflow plumbing every command shares is :mod:`common.tracking`.)

A continued night (after a kill) re-opens the same MLflow run, so the night stays one run: by the id in its
manifest, or, when the kill came between creating the MLflow run and recording its id, by the run's
``batch.run_id`` tag. A night that stops on an exception ends its run FAILED (KILLED on an interrupt); runs left
RUNNING by nights that will never be continued (a SIGKILL, then a new champion with its own ledger) are ended
KILLED by the next night, which holds the job's lock, so no other night is running
(:func:`common.tracking.end_orphaned_runs`, which training uses too).

Runs are named for people (``night 2026-12-07``) and described (``mlflow.note.content``: what was scored, by which
version, how many need review, drift, where the outputs are); so is the experiment.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_prediction.ledger import RunManifest
from common.tracking import NOTE
from inference.versions import ModelInfo

if TYPE_CHECKING:
    from mlflow import MlflowClient

_DRIFT_NUMERIC = ("statistic", "p_value", "p_value_adjusted", "effect_size")


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers as flat MLflow metrics. Pure."""
    inv = summary["this_invocation"]
    conf = summary["confidence"]
    metrics: dict[str, float] = {
        "images_total": summary["items"],
        "images_scored": summary["scored"],
        "images_failed": summary["failed"],
        "images_skipped": summary["skipped_already_scored"],
        "images_this_invocation": inv["processed"],
        "failure_rate": summary["failure_rate"],
        "needs_review": summary["needs_review"],
        "needs_review_rate": summary["needs_review_rate"],
        "unfamiliar": summary.get("unfamiliar", 0),
        "throughput_images_per_s": inv["throughput_items_per_s"],
        "scoring_seconds": inv["scoring_seconds"],
        "wall_seconds": inv["wall_seconds"],
        "peak_rss_mb": inv["peak_rss_mb"],
        "peak_rss_workers_mb": inv["peak_rss_workers_mb"],
        "cpu_seconds": inv["cpu_seconds"],
    }
    if summary.get("unfamiliar_rate") is not None:  # a version without the score has no share to log
        metrics["unfamiliar_rate"] = summary["unfamiliar_rate"]
    for reason, n in (summary.get("review_reasons") or {}).items():
        metrics[f"review_reason_{reason}"] = n
    if conf["mean"] is not None:
        metrics["confidence_mean"] = conf["mean"]
        metrics.update({f"confidence_{k}": v for k, v in conf["quantiles"].items() if v is not None})
    expected = summary.get("expected_accuracy") or {}
    for scope, value in expected.items():
        if value is not None:
            metrics[f"expected_accuracy_{scope}"] = value
    for name in ("auto_routed", "audit_sample"):
        if name in summary:
            metrics[name] = summary[name]
    for i, name in enumerate(summary["classes"]):
        metrics[f"class_count_{i}"] = summary["classes"][name]
    drift = summary.get("drift", {})
    metrics["drift_window_size"] = float(drift.get("window_size", 0) or 0)
    if drift.get("status") in ("ok", "drift"):
        metrics["drift_detected"] = 1.0 if drift["status"] == "drift" else 0.0
        tests = [t for t in drift.get("tests", []) or [] if isinstance(t, dict)]
        metrics["drift_tests_fired"] = float(sum(bool(t.get("fired")) for t in tests))
        for test in tests:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(test.get("name") or test.get("feature") or ""))
            for k in _DRIFT_NUMERIC:
                if name and isinstance(test.get(k), (int, float)):
                    metrics[f"drift_{name}_{k}"] = float(test[k])
    return {k: float(v) for k, v in metrics.items()}


EXPERIMENT_DESCRIPTION = (
    "One run per night of the nightly batch job (batch_prediction/batch_predict.py): what it scored under the input "
    "prefix with the champion of that night, how many need review or were quarantined, throughput, drift, and "
    "where the outputs are (tag output_location). A night with nothing new is not logged."
)


def night_run_name(manifest: RunManifest) -> str:
    """``night 2026-12-07`` (``... rescore`` for a deliberate rescore): what a person looks for in the run list."""
    return f"night {manifest.date}" + (" rescore" if manifest.rescore else "")


def night_description(summary: dict[str, Any]) -> str:
    """The night in two sentences for the MLflow UI (``mlflow.note.content``)."""
    model = summary["model"]
    drift = summary.get("drift", {}) or {}
    status = drift.get("status", "unavailable")
    reading = f": {drift['reading']}" if status == "drift" and drift.get("reading") else ""
    unfamiliar = f" ({summary['unfamiliar']:,} unfamiliar)" if summary.get("unfamiliar") else ""
    return (
        f"Night {summary['date']}: {summary['scored']:,} photo(s) under {summary['input_prefix']} scored by "
        f"{model['name']} v{model['version']} ({model.get('runtime')}); {summary['needs_review']:,} need review"
        f"{unfamiliar}, "
        f"{summary['failed']:,} quarantined, {summary['skipped_already_scored']:,} already scored earlier. "
        f"Drift: {status}{reading}. Outputs: {summary['output']}."
    )


class NightTracker:
    """Thin MLflow shell around one night. Nothing is asked of MLflow until the night has work (:meth:`start`)."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def _connect(self) -> MlflowClient:
        from mlflow import MlflowClient

        from common.tracking import ensure_experiment

        if self.client is None:
            self.experiment_id = ensure_experiment(self.experiment, self.tracking_uri, EXPERIMENT_DESCRIPTION)
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        return self.client

    def start(self, manifest: RunManifest, model: ModelInfo, *, resumed: bool) -> str:
        client = self._connect()
        existing = manifest.mlflow_run_id or self._find(manifest.run_id)
        if existing:
            self.run_id = existing
            client.update_run(self.run_id, status="RUNNING")
            client.set_tag(self.run_id, "resumed", "true")
            self.end_orphans()
            return self.run_id
        run = client.create_run(
            self.experiment_id,
            run_name=night_run_name(manifest),
            tags={
                "batch.run_id": manifest.run_id,
                "batch.date": manifest.date,
                "model_name": model.name,
                "model_version": model.version,
                "resumed": str(resumed).lower(),
                NOTE: f"Night {manifest.date} with {model.name} v{model.version}: scoring (the run is described "
                "when the night is finished).",
            },
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = {
            "model_name": model.name,
            "model_version": model.version,
            "model_uri": model.uri,
            "engine": manifest.engine,
            "input_prefix": manifest.input_prefix,
            "output_prefix": manifest.output_prefix,
            "rescore": str(manifest.rescore),
            "batch_run_id": manifest.run_id,
        }
        client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.end_orphans()
        return self.run_id

    def _find(self, batch_run_id: str) -> str | None:
        """The MLflow run already created for ``batch_run_id`` (its manifest never got the id), if any."""
        runs = self._connect().search_runs(
            [self.experiment_id], filter_string=f"tags.`batch.run_id` = '{batch_run_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def end_orphans(self) -> list[str]:
        """End as KILLED every other RUNNING night of the experiment (call while holding the job's lock: no other
        night runs, so every other RUNNING night was left so by a kill)."""
        from common.tracking import end_orphaned_runs

        return end_orphaned_runs(
            self._connect(),
            [self.experiment_id],
            is_orphan=lambda run: run.info.run_id != self.run_id,
            ended_by=f"night of {self.run_id}: left RUNNING by a kill",
        )

    def abort(self, *, killed: bool) -> None:
        """End this night's run FAILED (an error) or KILLED (an interrupt); the next invocation resumes it."""
        if self.run_id is not None:
            self._connect().set_terminated(self.run_id, status="KILLED" if killed else "FAILED")

    def finish(self, summary: dict[str, Any], *, failed: bool) -> None:
        from mlflow.entities import Metric, RunTag

        assert self.run_id is not None
        import time

        client = self._connect()

        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, 0) for k, v in summary_metrics(summary).items()]
        tags = [
            RunTag(NOTE, night_description(summary)),
            RunTag("output_location", summary["output"]),
            RunTag("drift_status", str(summary.get("drift", {}).get("status"))),
            RunTag("night_status", summary["status"]),
            RunTag("runtime", str(summary["model"].get("runtime"))),
        ]
        choice = summary["model"].get("runtime_choice") or {}
        if choice.get("reason"):
            tags.append(RunTag("runtime_choice", str(choice["reason"])[:5000]))
        for i in range(0, len(metrics), 500):
            client.log_batch(self.run_id, metrics=metrics[i : i + 500], tags=tags if i == 0 else [])
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "summary.json").write_text(json.dumps(summary, indent=2))
            (root / "drift.json").write_text(json.dumps(summary.get("drift", {}), indent=2))
            (root / "class_histogram.json").write_text(json.dumps(summary["classes"], indent=2))
            _confidence_plot(summary, root / "confidence_histogram.png")
            for name in ("summary.json", "drift.json", "class_histogram.json", "confidence_histogram.png"):
                if (root / name).exists():
                    client.log_artifact(self.run_id, str(root / name))
        client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _confidence_plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = summary["confidence"]["histogram"]
    edges, counts = hist["bin_edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", edgecolor="white")
    ax.axvline(summary["review_threshold"], color="crimson", linestyle="--", label="review threshold")
    ax.set_xlabel("confidence")
    ax.set_ylabel("items")
    ax.set_title(f"Night {summary['date']}: {summary['scored']} scored")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
