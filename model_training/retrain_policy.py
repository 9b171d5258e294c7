"""When to retrain: a cron-ready command that retrains only when it should, and says why.

Usage: python -m model_training.retrain_policy [--dry-run] [--full] [--lock-file PATH] [-v] [-- TRAIN_ARGS...]
       python -m model_training.retrain_policy --print-crontab [--schedule "30 6 * * *"] [--log-file PATH]
       (also: ric retrain-policy ...)

Reasons to retrain, any one is enough (:func:`decide`):

* **new labels**: at least ``RETRAIN_MIN_LABELS`` labelled photos with a class answer recorded since the champion's
  training data (its run's ``warehouse_labels_as_of``; all of them for a champion trained without labels);
* **degraded**: the most recent night of the champion whose accuracy could be judged is ``degraded``
  (:mod:`monitoring.performance`: the audit labels' interval lies below what the version was validated at);
* **drift**: the champion's last ``RETRAIN_DRIFT_NIGHTS`` finished nights all reported drift.

It prints and logs its decision with the numbers, writes measured accuracy back to the nights' MLflow runs, and
when it retrains runs ``python -m model_training.train --finetune`` (``--full``: the full recipe), passing the
reasons on (logged as the run's ``retrain_reason`` param); arguments after ``--`` go to the training command. A
file lock keeps two invocations from overlapping. Schedule it after the nightly job and after people had time to
label (``--print-crontab``).

Exit codes:
    0   decided: nothing to do, or retrained (promoted or not, the training's last line says)
    1   the training failed
    2   bad arguments or settings
    3   cannot decide: no champion, or the store or the registry failed
    10  ``--dry-run`` and retraining is due
    75  another invocation holds the lock
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import command_parser, explain, fail, from_env, help_settings, read_settings
from common.logging import setup_logging
from common.settings import Settings

log = logging.getLogger("model_training.retrain_policy")

EXIT_OK, EXIT_TRAIN_FAILED, EXIT_USAGE, EXIT_UNDECIDED, EXIT_DUE, EXIT_LOCKED = 0, 1, 2, 3, 10, 75
DEFAULT_SCHEDULE = "30 6 * * *"  # after the midnight batch and the morning's labelling


@dataclass(frozen=True)
class Evidence:
    """What the policy looks at (all of it from the store and the registry)."""

    champion: str
    new_labels: int
    labels_as_of: str | None  # the champion's training labels' cut-off
    latest_status: str | None  # of the champion's most recent judged night
    latest_reason: str = ""
    drift_nights: list[bool] = field(default_factory=list)  # the champion's nights, oldest first: drift or not


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reasons: list[str]
    notes: list[str]

    def line(self) -> str:
        what = "retrain: " + "; ".join(self.reasons) if self.retrain else "no retraining needed"
        return f"{what} ({'; '.join(self.notes)})"


def decide(evidence: Evidence, *, min_labels: int, drift_nights: int) -> Decision:
    """The policy itself. Pure."""
    reasons, notes = [], []
    labels = f"{evidence.new_labels} new label(s) since version {evidence.champion}'s data (need {min_labels})"
    (reasons if evidence.new_labels >= min_labels else notes).append(labels)
    status = f"measured accuracy {evidence.latest_status or 'unknown'}"
    if evidence.latest_reason:
        status += f": {evidence.latest_reason}"
    (reasons if evidence.latest_status == "degraded" else notes).append(status)
    recent = evidence.drift_nights[-drift_nights:]
    in_a_row = len(recent) == drift_nights and all(recent)
    drift = f"drift on {sum(recent)} of the last {len(recent)} night(s) (retrain after {drift_nights} in a row)"
    (reasons if in_a_row else notes).append(drift)
    return Decision(bool(reasons), reasons, notes)


def gather(settings: Settings) -> Evidence:
    """Read the evidence: the champion and its training labels' cut-off (registry), labels and nights (store)."""
    from mlflow import MlflowClient

    from common.storage import storage_from_settings
    from inference.versions import resolve_model
    from monitoring.label_store import LabelStore
    from monitoring.nights import list_nights, read_summary
    from monitoring.performance import RegistryFigures, StatusPolicy, performance_table, write_back

    uri = settings.mlflow_tracking_uri
    champion = resolve_model(f"models:/{settings.model_name}@champion", uri)
    params = MlflowClient(tracking_uri=uri).get_run(champion.run_id).data.params if champion.run_id else {}
    as_of = params.get("warehouse_labels_as_of")
    as_of = None if as_of in (None, "none") else as_of
    storage = storage_from_settings(settings)
    current = LabelStore(storage).current()
    new = sum(1 for lab in current.values() if lab.class_id is not None and (as_of is None or lab.recorded_at > as_of))
    loop = settings.learning
    rows = performance_table(
        storage, current, RegistryFigures(uri, settings.model_name), StatusPolicy(loop.accuracy_margin,
                                                                                  loop.accuracy_min_labels)
    )  # fmt: skip
    write_back(uri, rows)
    judged = [r for r in rows if r.model_version == champion.version and r.status != "unknown"]
    drift = []
    for night in list_nights(storage):
        summary = read_summary(storage, night)
        if str(summary.get("model", {}).get("version")) == champion.version:
            drift.append((summary.get("drift") or {}).get("status") == "drift")
    latest = judged[-1] if judged else None
    return Evidence(
        champion=champion.version,
        new_labels=new,
        labels_as_of=as_of,
        latest_status=latest.status if latest else None,
        latest_reason=f"night {latest.date}: {latest.reason}" if latest else "",
        drift_nights=drift,
    )


def train_command(decision: Decision, *, full: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "model_training.train"]
    if not full:
        cmd.append("--finetune")
    return [*cmd, "--reason", "; ".join(decision.reasons), *extra]


PROG = "ric retrain-policy"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the help shows the environment's values (``settings``) as the defaults."""
    env = settings or Settings()
    loop = env.learning
    p = command_parser("retrain-policy", __doc__)
    p.add_argument("--dry-run", action="store_true", help="decide and say why, but do not train (exit 10 when due)")
    p.add_argument("--full", action="store_true", help="retrain with the full recipe instead of --finetune")
    p.add_argument("--lock-file", help=f"lock against overlapping runs (default {env.data_dir}/retrain_policy.lock)")
    p.add_argument("--print-crontab", action="store_true", help="print the crontab line for this command and exit")
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="cron schedule of --print-crontab")
    p.add_argument("--log-file", help=f"log file of --print-crontab (default {env.data_dir}/logs/retrain_policy.log)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("train_args", nargs="*",
                   help="after --: arguments for model_training.train (default: none)")  # fmt: skip
    p.epilog = (
        f"{p.epilog}\n\nThresholds: {from_env(loop, 'retrain_min_labels')} new labels; "
        f"{from_env(loop, 'retrain_drift_nights')} nights of drift in a row; degraded as "
        f"{from_env(loop, 'accuracy_margin')} and {from_env(loop, 'accuracy_min_labels')} say."
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from common.cron import crontab_line, schedule_problems, strip_cron_args

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(help_settings())
    args = parser.parse_args(argv)
    if problems := schedule_problems(args.schedule):
        parser.error(f"--schedule {args.schedule!r}: {'; '.join(problems)}")
    if (settings := read_settings(PROG, ("learning",))) is None:
        return EXIT_USAGE
    setup_logging(args.verbose, settings.log_level)
    if args.print_crontab:
        job_args = strip_cron_args(argv)
        print(crontab_line(settings, schedule=args.schedule, log_file=args.log_file, job_args=job_args,
                           module="model_training.retrain_policy"))  # fmt: skip
        return EXIT_OK
    from filelock import FileLock, Timeout

    lock_path = Path(args.lock_file) if args.lock_file else Path(settings.data_dir) / "retrain_policy.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        fail(PROG, f"another retrain-policy run holds {lock_path}; exiting (75)")
        return EXIT_LOCKED
    try:
        return _run(args, settings)
    finally:
        lock.release()


def _run(args: Any, settings: Settings) -> int:
    try:
        evidence = gather(settings)
    except Exception as exc:
        fail(PROG, f"cannot decide: {explain(exc, settings)}")
        return EXIT_UNDECIDED
    loop = settings.learning
    decision = decide(evidence, min_labels=loop.retrain_min_labels, drift_nights=loop.retrain_drift_nights)
    print(f"retrain policy (champion version {evidence.champion}): {decision.line()}", flush=True)
    log.info("decision: %s", decision.line())
    if not decision.retrain:
        return EXIT_OK
    if args.dry_run:
        return EXIT_DUE
    cmd = train_command(decision, full=args.full, extra=list(args.train_args))
    log.info("training: %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        log.error("training failed with exit code %d", done.returncode)
        return EXIT_TRAIN_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
