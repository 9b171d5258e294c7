"""Accuracy over time: per night and model version, what the calibrated confidences promise and what people's
audit labels measure.

Usage: python -m monitoring.performance [--last N] [--json] [--no-mlflow] [--storage-uri URI] [--tracking-uri URI]
       (also: ric performance ...)

* expected (no labels needed, written by the night itself at scoring time): the mean calibrated confidence of the
  auto-routed items, and of every scored item (``summary.json``'s ``expected_accuracy``);
* measured: the share of the night's audit sample (``audit.csv``, a uniform sample of the auto-routed items) whose
  label agrees with the model, with a 95 % Wilson interval. ``other`` (not one of the 10) counts as a mistake,
  ``unusable`` is left out (nobody can say). Labels bind the photo's content hash: a replaced photo's old label
  does not count;
* status: ``unknown`` with fewer than ``ACCURACY_MIN_LABELS`` audit labels (or no validated figure for the version),
  ``degraded`` when the whole interval lies more than ``ACCURACY_MARGIN`` below the accuracy the version was
  validated at (its auto-routed share of the photo benchmark's test photos, at its own review threshold), else
  ``ok``.

The command prints the table of nights (oldest first) and writes each night's measured accuracy back to that
night's MLflow run (metrics ``measured_accuracy_auto``, ``_low``, ``_high``, ``audit_labels``; tag
``accuracy_status``) unless ``--no-mlflow``. The dashboard charts the same rows (``GET /performance``) and
``/metrics`` exposes the latest as gauges.

Exit codes:
    0  printed
    1  the store or MLflow failed (one line says which)
    2  bad arguments or settings
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from common.cli import command_parser, from_env, positive_int
from common.settings import Settings
from common.storage import Storage
from monitoring.label_store import UNUSABLE, Label, LabelStore
from monitoring.nights import AUDIT, NEEDS_REVIEW, NightRef, list_nights, read_rows, read_summary

log = logging.getLogger("monitoring.performance")

Z95 = 1.959964
NIGHTS_EXPERIMENT = "batch-predictions"  # the nightly job's MLflow experiment (batch_prediction.night.EXPERIMENT)
STATUSES = ("ok", "degraded", "unknown")


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion with continuity correction (95 % by default; Newcombe 1998, method
    4); (0, 1) for n = 0.

    Why corrected: the audit sample is small (20 a night) and the auto-routed items' accuracy is near 1, where the
    plain Wilson interval covers less than it says (about 86-91 % at p = 0.99-0.995 with n = 20-50; bench_learning_loop
    missed the truth on 2 of its first 6 nights, each 19 right of 20 with the truth at 99.2 and 97.6 %). Corrected,
    it covers at least 95 % there (tests/monitoring/test_performance.py computes both exactly)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    zz = z * z
    low = 0.0
    if correct > 0:
        low = (2 * n * p + zz - 1 - z * math.sqrt(zz - 2 - 1 / n + 4 * p * (n * (1 - p) + 1))) / (2 * (n + zz))
    high = 1.0
    if correct < n:
        high = (2 * n * p + zz + 1 + z * math.sqrt(zz + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))) / (2 * (n + zz))
    return max(0.0, low), min(1.0, high)


def validated_accuracy(metrics: Mapping[str, float]) -> float | None:
    """The auto-routed accuracy a version was validated at, from its training run's metrics: on the photo
    benchmark's test photos at its own review threshold, 1 - (wrong and confident) / (not reviewed)."""
    wrong = metrics.get("photo_test_confident_error_share_at_target_threshold")
    review = metrics.get("photo_test_review_share_at_target_threshold")
    if wrong is None or review is None or review >= 1.0:
        return None
    return 1.0 - wrong / (1.0 - review)


@dataclass(frozen=True)
class StatusPolicy:
    margin: float = 0.02
    min_labels: int = 20


@dataclass
class NightPerformance:
    """One night's row of the table."""

    date: str
    run_id: str
    model_version: str
    scored: int
    review_share: float
    auto_routed: int
    expected_all: float | None
    expected_auto: float | None
    audit_size: int
    audit_labels: int  # audit items with a usable label
    audit_correct: int
    measured_auto: float | None
    measured_low: float | None
    measured_high: float | None
    validated_auto: float | None
    labels: int  # labels of the night's items (review queue and audit sample), unusable ones included
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(rows: list[dict[str, str]], labels: Mapping[tuple[str, str], Label]) -> tuple[int, int, int]:
    """(usable labels, labels agreeing with the model, labels of any kind) over a night's CSV rows."""
    usable = correct = given = 0
    for row in rows:
        label = labels.get((row.get("key", ""), row.get("sha256", "")))
        if label is None:
            continue
        given += 1
        if label.label == UNUSABLE:
            continue
        usable += 1
        correct += label.label == row.get("class_name")
    return usable, correct, given


def judge(n: int, low: float, high: float, validated: float | None, policy: StatusPolicy) -> tuple[str, str]:
    """(status, reason) of a measured interval against the validated accuracy."""
    if n < policy.min_labels:
        return "unknown", f"{n} audit label(s); at least {policy.min_labels} are needed"
    if validated is None:
        return "unknown", "no validated accuracy for this version"
    if high < validated - policy.margin:
        return "degraded", (
            f"95 % interval [{low:.3f}, {high:.3f}] lies below the validated {validated:.3f} - {policy.margin:.3f}"
        )
    return "ok", f"95 % interval [{low:.3f}, {high:.3f}] against the validated {validated:.3f} - {policy.margin:.3f}"


def measure_night(
    night: NightRef,
    summary: Mapping[str, Any],
    audit_rows: list[dict[str, str]],
    review_rows: list[dict[str, str]],
    labels: Mapping[tuple[str, str], Label],
    validated: float | None,
    policy: StatusPolicy,
) -> NightPerformance:
    """One night's expected and measured accuracy and its status. Pure."""
    n, k, given_audit = agreement(audit_rows, labels)
    _, _, given_review = agreement(review_rows, labels)
    low, high = wilson(k, n)
    status, reason = judge(n, low, high, validated, policy)
    expected = summary.get("expected_accuracy") or {}
    scored = int(summary.get("scored", 0))
    return NightPerformance(
        date=night.date,
        run_id=night.run_id,
        model_version=str(summary.get("model", {}).get("version", "")),
        scored=scored,
        review_share=float(summary.get("needs_review_rate", 0.0)),
        auto_routed=int(summary.get("auto_routed", scored - int(summary.get("needs_review", 0)))),
        expected_all=expected.get("all"),
        expected_auto=expected.get("auto_routed"),
        audit_size=len(audit_rows),
        audit_labels=n,
        audit_correct=k,
        measured_auto=k / n if n else None,
        measured_low=low if n else None,
        measured_high=high if n else None,
        validated_auto=validated,
        labels=given_audit + given_review,
        status=status,
        reason=reason,
    )


def performance_table(
    storage: Storage,
    labels: Mapping[tuple[str, str], Label],
    validated_for: Callable[[str], float | None],
    policy: StatusPolicy,
    *,
    last: int | None = None,
) -> list[NightPerformance]:
    """Every finished night (or the ``last`` N), oldest first. ``validated_for(version)`` gives a version's
    validated auto-routed accuracy (None when unknown)."""
    nights = list_nights(storage)
    if last is not None:
        nights = nights[-last:]
    rows = []
    for night in nights:
        summary = read_summary(storage, night)
        version = str(summary.get("model", {}).get("version", ""))
        rows.append(
            measure_night(
                night,
                summary,
                read_rows(storage, night, AUDIT),
                read_rows(storage, night, NEEDS_REVIEW),
                labels,
                validated_for(version),
                policy,
            )
        )
    return rows


def latest_status(rows: list[NightPerformance]) -> NightPerformance | None:
    """The most recent night whose accuracy could be judged (enough audit labels), if any."""
    return next((r for r in reversed(rows) if r.status != "unknown"), None)


class RegistryFigures:
    """Each version's validated accuracy, read once from its training run (MLflow)."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._cache: dict[str, float | None] = {}

    def __call__(self, version: str) -> float | None:
        if version not in self._cache:
            self._cache[version] = self._read(version)
        return self._cache[version]

    def _read(self, version: str) -> float | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            mv = client.get_model_version(self.model_name, version)
            return validated_accuracy(client.get_run(mv.run_id).data.metrics) if mv.run_id else None
        except MlflowException:
            return None


def write_back(tracking_uri: str, rows: list[NightPerformance], experiment: str = NIGHTS_EXPERIMENT) -> int:
    """Log each measured night's accuracy to its MLflow run (found by its ``batch.run_id`` tag); returns how many
    runs got new values. A night whose run already holds the same number of labels is left alone."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    written = 0
    for row in rows:
        if row.measured_auto is None:
            continue
        found = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`batch.run_id` = '{row.run_id}'", max_results=1
        )
        if not found:
            continue
        run = found[0]
        if run.data.metrics.get("audit_labels") == row.audit_labels and run.data.tags.get("accuracy_status"):
            continue
        import time

        ts = int(time.time() * 1000)
        values = {
            "measured_accuracy_auto": row.measured_auto,
            "measured_accuracy_auto_low": row.measured_low,
            "measured_accuracy_auto_high": row.measured_high,
            "audit_labels": row.audit_labels,
        }
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), ts, row.audit_labels) for k, v in values.items()],
            tags=[RunTag("accuracy_status", row.status), RunTag("accuracy_status_reason", row.reason)],
        )
        written += 1
    return written


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:5.1f}"


def format_table(rows: list[NightPerformance]) -> str:
    header = (
        f"{'night':<31} {'ver':>4} {'scored':>7} {'review%':>7} {'exp_all':>7} {'exp_auto':>8} "
        f"{'audit':>5} {'labelled':>8} {'measured':>8} {'95% interval':>13} {'valid.':>6}  status"
    )
    lines = [header]
    for r in rows:
        interval = "-" if r.measured_low is None else f"{_pct(r.measured_low)}-{_pct(r.measured_high).strip()}"
        lines.append(
            f"{r.date + '/' + r.run_id[:20]:<31} {r.model_version:>4} {r.scored:>7} {_pct(r.review_share):>7} "
            f"{_pct(r.expected_all):>7} {_pct(r.expected_auto):>8} {r.audit_size:>5} {r.audit_labels:>8} "
            f"{_pct(r.measured_auto):>8} {interval:>13} {_pct(r.validated_auto):>6}  {r.status}"
        )
    latest = latest_status(rows)
    lines.append(
        "status: unknown (no night has enough audit labels yet)"
        if latest is None
        else f"status: {latest.status} (night {latest.date}/{latest.run_id}: {latest.reason})"
    )
    return "\n".join(lines)


PROG = "ric performance"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    p = command_parser("performance", __doc__)
    p.add_argument("--last", type=positive_int, help="only the last N nights (default: all)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--no-mlflow", action="store_true", help="do not write measured accuracy back to MLflow")
    p.add_argument("--storage-uri", help=f"the store (default {from_env(env, 'storage_uri')})")
    p.add_argument(
        "--tracking-uri", help=f"MLflow store of the nights' runs (default {from_env(env, 'mlflow_tracking_uri')})"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    from common.cli import explain, fail, help_settings, read_settings
    from common.logging import setup_logging
    from common.storage import is_storage_error, storage_from_settings
    from common.tracking import is_unreachable

    args = build_parser(help_settings()).parse_args(argv)
    if (env := read_settings(PROG, ("learning",))) is None:
        return 2
    setup_logging(args.verbose, env.log_level)
    settings = env.with_overrides(storage_uri=args.storage_uri, mlflow_tracking_uri=args.tracking_uri)
    policy = StatusPolicy(settings.learning.accuracy_margin, settings.learning.accuracy_min_labels)
    try:
        storage = storage_from_settings(settings)
        figures = RegistryFigures(settings.mlflow_tracking_uri, settings.model_name)
        rows = performance_table(storage, LabelStore(storage).current(), figures, policy, last=args.last)
        if not args.no_mlflow and rows:
            written = write_back(settings.mlflow_tracking_uri, rows)
            log.info("measured accuracy written to %d night run(s) in MLflow", written)
    except Exception as exc:
        if not (is_storage_error(exc) or is_unreachable(exc) or type(exc).__module__.startswith("mlflow")):
            raise
        fail(PROG, explain(exc, settings))
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    elif not rows:
        print(f"no finished nights in {storage.uri}")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
