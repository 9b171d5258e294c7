"""``GET /drift-status`` off the request path: the drift report of the served version, computed in the background
and answered from memory.

Evaluating the drift tests costs ~30 ms of CPU (a snapshot of the shared window, a dozen statistical tests); done in
every request, 8 clients polling the status took ``/predict`` from 327 to 22.6 req/s. Now a request answers the last
report (``computed_at`` says when); a background thread recomputes it every :data:`REFRESH_SECONDS` while anyone
has asked in the last :data:`IDLE_AFTER_SECONDS`, so an API nobody polls spends nothing on it. Only the first request
for a newly served version computes in line (there is nothing to answer yet), once per worker and version.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from model_serving.state import Served
from monitoring.drift import DriftConfig, evaluate_drift

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
IDLE_AFTER_SECONDS = 300.0


class DriftReporter:
    """The latest drift report of one worker's served version, kept current by a daemon thread."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self._latest: tuple[Served, dict[str, Any]] | None = None
        self._asked = 0.0
        self._lock = threading.Lock()  # one computation at a time
        self._thread: threading.Thread | None = None

    def report(self, served: Served) -> dict[str, Any]:
        """The report of ``served`` (which has a reference): the cached one, or computed now if there is none."""
        self._asked = time.monotonic()
        latest = self._latest
        if latest is None or latest[0] is not served:
            latest = self._compute(served)
            self._start()
        return latest[1]

    def _compute(self, served: Served) -> tuple[Served, dict[str, Any]]:
        with self._lock:
            report = evaluate_drift(served.reference, served.feed.snapshot(), self.config).to_dict()
            report["model_name"], report["model_version"] = served.info.name, served.info.version
            report["computed_at"] = round(time.time(), 3)
            latest = (served, report)
            self._latest = latest
            return latest

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift-status", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            latest = self._latest
            if latest is None or time.monotonic() - self._asked > IDLE_AFTER_SECONDS:
                continue
            try:
                self._compute(latest[0])
            except Exception as exc:  # a window on a broken disk: keep the last report, try again later
                log.warning("drift status not refreshed: %s: %s", type(exc).__name__, exc)
