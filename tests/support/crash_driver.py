"""The nightly job as its own process, made to SIGKILL itself at a chosen write: the crash tests' fault injection.

    python -m tests.support.crash_driver <point>:<n> [job flags ...]

runs the real :func:`batch_prediction.batch_predict.main` with ``job flags``, its store and MLflow tracker wrapped
(through ``main``'s ``open_store`` / ``open_tracker`` parameters) so that the process kills itself with SIGKILL
(no ``finally``, no cleanup, exactly as the kernel's OOM killer or a power cut would stop it) the ``n``-th time it
reaches ``point``:

* ``after_mlflow_run``: the night's MLflow run was created (or re-opened); its id is not in the manifest yet
* ``after_manifest``: a write of the run's manifest ``ledger/.../<run-id>/_RUN.json`` completed (the job writes it
  before creating the MLflow run, then again with the MLflow run's id: ``after_manifest:1`` is before the MLflow run)
* ``before_part``: a batch's CSV and drift side files are written, its Parquet part (the commit) is not
* ``after_part``: the batch's Parquet part is committed, its ledger part is not written
* ``after_ledger``: the batch's ledger part ``ledger/.../<run-id>/part-NNNNN.parquet`` is written
* ``before_success``: summary.json and the MLflow run are final, ``_SUCCESS`` is not written
* ``before_done``: ``_SUCCESS`` is written, the ledger's ``_DONE`` is not

Before it dies it prints ``crash driver: SIGKILL at <point> #<n> (<key>)`` on stderr. Local stores only.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass

from batch_prediction import batch_predict
from batch_prediction.ledger import RunManifest
from batch_prediction.night_runs import NightTracker
from common.settings import Settings
from common.storage import LocalStorage, Storage
from inference.versions import ModelInfo

# point -> (before or after the write, the keys it counts)
WRITE_POINTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "after_manifest": ("after", re.compile(r"^ledger/.+/_RUN\.json$")),
    "before_part": ("before", re.compile(r"^predictions/.+/parquet/part-\d+\.parquet$")),
    "after_part": ("after", re.compile(r"^predictions/.+/parquet/part-\d+\.parquet$")),
    "after_ledger": ("after", re.compile(r"^ledger/.+/part-\d+\.parquet$")),
    "before_success": ("before", re.compile(r"^predictions/.+/_SUCCESS$")),
    "before_done": ("before", re.compile(r"^ledger/.+/_DONE$")),
}
POINTS = ("after_mlflow_run", *WRITE_POINTS)


@dataclass
class KillSwitch:
    """SIGKILLs this process the ``n``-th time :meth:`reach` is called with ``point``."""

    point: str
    n: int
    seen: int = 0

    @classmethod
    def parse(cls, spec: str) -> KillSwitch:
        point, _, n = spec.partition(":")
        if point not in POINTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"expected <point>:<n> with n >= 1 and point one of {', '.join(POINTS)}; got {spec!r}")
        return cls(point, int(n))

    def reach(self, point: str, what: str) -> None:
        if point != self.point:
            return
        self.seen += 1
        if self.seen == self.n:
            print(f"crash driver: SIGKILL at {point} #{self.n} ({what})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def reach_write(self, when: str, key: str) -> None:
        spec = WRITE_POINTS.get(self.point)
        if spec is not None and spec[0] == when and spec[1].search(key):
            self.reach(self.point, key)


class KillingLocalStorage(LocalStorage):
    """The job's local store, unchanged, except that the kill switch is consulted around every write."""

    def __init__(self, root: str, switch: KillSwitch) -> None:
        super().__init__(root)
        self.switch = switch

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, durable: bool = False) -> None:
        self.switch.reach_write("before", key)
        super().put_bytes(key, data, content_type=content_type, durable=durable)
        self.switch.reach_write("after", key)


class KillingTracker(NightTracker):
    """The job's MLflow tracker, unchanged, except that the kill switch is consulted once the run exists."""

    def __init__(self, tracking_uri: str, experiment: str, switch: KillSwitch) -> None:
        super().__init__(tracking_uri, experiment)
        self.switch = switch

    def start(self, manifest: RunManifest, model: ModelInfo, *, resumed: bool) -> str:
        run_id = super().start(manifest, model, resumed=resumed)
        self.switch.reach("after_mlflow_run", run_id)
        return run_id


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    switch = KillSwitch.parse(argv[0])

    def open_store(settings: Settings) -> Storage:
        if "://" in settings.storage_uri:
            raise ValueError(f"the crash driver wraps local stores only, not {settings.storage_uri}")
        return KillingLocalStorage(settings.storage_uri, switch)

    return batch_predict.main(
        argv[1:],
        open_store=open_store,
        open_tracker=lambda uri, experiment: KillingTracker(uri, experiment, switch),
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
