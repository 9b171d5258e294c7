"""The nightly job's published outputs, as the other stages read them: where finished nights live and their
``summary.json``, ``needs_review.csv`` and ``audit.csv`` (the batch job writes them; :mod:`batch_prediction.outputs`
takes its names from here, so the layout has one owner below every stage that reads it)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from common.storage import ObjectNotFound, Storage, join_key

PREDICTIONS_PREFIX = "predictions"
SUMMARY = "summary.json"
NEEDS_REVIEW = "needs_review.csv"
AUDIT = "audit.csv"
SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class NightRef:
    """One finished night: ``predictions/<date>/<run_id>/``."""

    date: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"{PREDICTIONS_PREFIX}/{self.date}/{self.run_id}"

    @property
    def name(self) -> str:
        return f"{self.date}/{self.run_id}"


def list_nights(storage: Storage) -> list[NightRef]:
    """Every finished night (its ``_SUCCESS`` written), oldest first (date, then run id: ids sort by start)."""
    found = []
    for info in storage.list(f"{PREDICTIONS_PREFIX}/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == SUCCESS:
            found.append(NightRef(parts[1], parts[2]))
    return sorted(found, key=lambda n: (n.date, n.run_id))


def find_night(storage: Storage, name: str | None) -> NightRef | None:
    """The night ``<date>/<run_id>`` (or the latest when ``name`` is None), if it is finished."""
    nights = list_nights(storage)
    if name is None:
        return nights[-1] if nights else None
    return next((n for n in nights if n.name == name.strip("/")), None)


def read_summary(storage: Storage, night: NightRef) -> dict[str, Any]:
    return json.loads(storage.get_bytes(join_key(night.prefix, SUMMARY)))


def read_rows(storage: Storage, night: NightRef, name: str) -> list[dict[str, str]]:
    """The rows of one of the night's CSV files (``needs_review.csv``, ``audit.csv``); [] when it has none (nights
    written before the audit sample existed)."""
    try:
        data = storage.get_bytes(join_key(night.prefix, name))
    except ObjectNotFound:
        return []
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
