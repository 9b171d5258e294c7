"""The model registry's policy: register a trained model, gate its promotion to ``champion``, list versions,
promote, roll back (the library of ``python -m model_training.registry``; training registers through
:func:`register_and_gate`).

Aliases: every newly trained version gets ``challenger``; ``champion`` (what the API and the batch job serve)
moves to it only when its test accuracy is >= the current champion's and its photo-benchmark accuracy is >= the
champion's (when both were measured on the same photo set), or there is no champion, or the promotion is forced.
When the run had warehouse test labels (people's labels of the warehouse's own photos), both models are scored on
those same photos when the gate runs and the challenger must not be worse there; a challenger that is strictly
better on them may be up to ``WAREHOUSE_TOLERANCE`` (0.3 points) below the champion on the clean test split and the
photo benchmark (what a warehouse that changed is worth: the clean sets no longer say everything). When its lead on
the warehouse's photos is significant (the Wilson 95 % lower bound of its accuracy there is above the champion's),
the rendered photo benchmark, a stand-in for exactly those photos, may be up to ``PHOTO_TOLERANCE_WAREHOUSE_LEAD``
(1 point) lower; the clean test split keeps its 0.3 points.
Every champion change is recorded, oldest first, in the registered-model tag ``champion_history`` (a JSON list
of versions), so ``rollback`` can restore the previous champion even after several promotions; versions deleted
since are skipped.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from common.redact import redact
from common.tracking import is_unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger("model_training.registry")  # the command's name in its log lines, as before the split

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
HISTORY_MAX = 200  # registered-model tag values are capped (5,000 chars); old entries are dropped first
ACCURACY_KEY = "test_accuracy"
MACRO_F1_KEY = "test_macro_f1"
PHOTO_ACCURACY_KEY = "photo_test_accuracy"
PHOTO_BENCHMARK_KEY = "photo_benchmark"  # which photo set (renderer version, seed, size): only like is compared
EPOCHS_KEY = "epochs"  # a version's "trained/planned" epochs, e.g. "5/44" (set by training: model_training.describe)
BUDGET_CUT_KEY = "budget_cut"  # "true" when the time budget trained fewer epochs than planned
MODEL_DESCRIPTION = (
    "Classifies photos of returned items into the 10 Fashion-MNIST categories and flags the ones it is unsure of "
    "(confidence below the version's review threshold) for a person. Alias champion: the version the API and the "
    "nightly batch job serve; challenger: the newest version. Each new version becomes champion only when its "
    "test accuracy and its photo-benchmark accuracy are at least the champion's, and, when people have labelled "
    "warehouse photos, its accuracy on their test share too (ric registry promote / rollback decide by hand). Each "
    "version's description says what it was trained on and how it scored."
)
WAREHOUSE_ACCURACY_KEY = "warehouse_test_accuracy"
WAREHOUSE_TOLERANCE = 0.003  # clean and photo accuracy a challenger better on the warehouse's photos may give up
# The rendered photo benchmark imitates the warehouse's photos; once people's labels of the real ones show a
# significant lead, the imitation may not veto it (bench_learning_loop: a fine-tuned version 74 % against 43 % on
# 155 turned warehouse photos was held back by 0.5 points on the rendered ones). Clean accuracy keeps its bound.
PHOTO_TOLERANCE_WAREHOUSE_LEAD = 0.01


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back, ...)."""


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WarehouseComparison:
    """Challenger and champion scored on the same warehouse test photos (``n`` of them) when the gate runs."""

    n: int
    challenger: float
    champion: float | None  # None: no champion, or it could not be scored


# --- pure policy ----------------------------------------------------------------------------------------


def should_promote(
    new_accuracy: float,
    champion_accuracy: float | None,
    force: bool = False,
    *,
    new_photo: float | None = None,
    champion_photo: float | None = None,
    warehouse: WarehouseComparison | None = None,
) -> tuple[bool, str]:
    """The promotion gate: test accuracy >= the champion's AND photo-benchmark accuracy >= the champion's AND, with
    warehouse test labels, warehouse accuracy >= the champion's on the same photos (strictly better: the clean and
    photo accuracy may then be up to WAREHOUSE_TOLERANCE lower; the photo accuracy up to
    PHOTO_TOLERANCE_WAREHOUSE_LEAD lower when that lead is significant, :func:`warehouse_lead_is_significant`).

    A champion whose accuracy is unknown never blocks a measured challenger; a champion without a photo-benchmark
    result (older versions, or one measured on another photo set) is judged on test accuracy alone.
    """
    if force:
        return True, "forced (--force-promote)"
    if champion_accuracy is None or math.isnan(champion_accuracy):
        return True, "no champion with a known test accuracy"
    ahead = _warehouse_ahead(warehouse)
    slack = WAREHOUSE_TOLERANCE if ahead else 0.0
    photo_slack = PHOTO_TOLERANCE_WAREHOUSE_LEAD if warehouse_lead_is_significant(warehouse) else slack
    if new_accuracy < champion_accuracy - slack:
        return False, f"test accuracy {new_accuracy:.4f} < champion's {champion_accuracy:.4f}" + _slack(slack)
    reason = f"test accuracy {new_accuracy:.4f} vs champion's {champion_accuracy:.4f}"
    if champion_photo is not None and not math.isnan(champion_photo):
        if new_photo is None or math.isnan(new_photo):
            return False, f"{reason}, but no photo-benchmark result to compare with the champion's {champion_photo:.4f}"
        if new_photo < champion_photo - photo_slack:
            return False, (
                f"{reason}, but photo-benchmark accuracy {new_photo:.4f} < champion's {champion_photo:.4f}"
                + _slack(photo_slack)
            )
        reason += f", photo-benchmark accuracy {new_photo:.4f} vs {champion_photo:.4f}"
    else:
        reason += "; champion has no comparable photo-benchmark result"
    if warehouse is not None and warehouse.champion is not None:
        verdict = (
            f"warehouse accuracy {warehouse.challenger:.4f} vs champion's {warehouse.champion:.4f} "
            f"on the same {warehouse.n} photos"
        )
        if warehouse.challenger < warehouse.champion:
            return False, f"{reason}, but {verdict}"
        reason += f", {verdict}"
    return True, reason


def _warehouse_ahead(warehouse: WarehouseComparison | None) -> bool:
    return bool(warehouse and warehouse.champion is not None and warehouse.challenger > warehouse.champion)


def warehouse_lead_is_significant(warehouse: WarehouseComparison | None) -> bool:
    """The challenger's lead on the warehouse photos is beyond chance: the Wilson 95 % lower bound of its accuracy
    on the ``n`` photos lies above the champion's accuracy on the same photos."""
    from monitoring.performance import wilson

    if not _warehouse_ahead(warehouse):
        return False
    assert warehouse is not None and warehouse.champion is not None
    low, _ = wilson(round(warehouse.challenger * warehouse.n), warehouse.n)
    return low > warehouse.champion


def _slack(slack: float) -> str:
    return f" - {slack:.3f} (allowed while better on the warehouse's photos)" if slack else ""


def parse_history(raw: str | None) -> list[str]:
    """The ``champion_history`` tag value -> list of version strings (tolerates a missing/garbled tag)."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def rollback_target(history: list[str], current: str | None, existing: set[str]) -> tuple[str, list[str]] | None:
    """Previous champion before ``current`` and the history to keep; None if there is nothing to go back to."""
    hist = list(history)
    while hist and (hist[-1] == current or hist[-1] not in existing):
        hist.pop()
    if not hist:
        return None
    return hist[-1], hist


# --- MLflow I/O -----------------------------------------------------------------------------------------


def client_for(tracking_uri: str | None) -> MlflowClient:
    """A client of the tracking store and its registry (explicit: no global state)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # explicit: no global state


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at; None when it points nowhere (a stopped server raises)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_unreachable(exc):  # a stopped server is not "no such alias"
            raise
        return None


def model_exists(client: MlflowClient, name: str) -> bool:
    """Whether ``name`` is a registered model (a stopped server raises)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if is_unreachable(exc):
            raise
        return False
    return True


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """The champions of ``name``, oldest first (the ``champion_history`` tag)."""
    return parse_history(client.get_registered_model(name).tags.get(HISTORY_TAG))


def _set_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_MAX:]))


def version_metric(client: MlflowClient, mv: ModelVersion, key: str = ACCURACY_KEY) -> float | None:
    """A metric of a version: its own tag if set, else the metric of the run that produced it."""
    if key in (mv.tags or {}):
        try:
            return float(mv.tags[key])
        except ValueError:
            pass
    if not mv.run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(mv.run_id).data.metrics.get(key)
    except MlflowException:
        return None


def promote(client: MlflowClient, name: str, version: str, reason: str) -> str | None:
    """Point ``champion`` at ``version`` and record it in the history; returns the previous champion."""
    version = str(client.get_model_version(name, str(version)).version)  # raises if unknown
    previous = alias_version(client, name, CHAMPION)
    prev_version = str(previous.version) if previous is not None else None
    if prev_version == version:
        return prev_version
    history = champion_history(client, name)
    if prev_version is not None and (not history or history[-1] != prev_version):
        history.append(prev_version)  # champion set outside this tool (UI, fixture): keep it restorable
    client.set_registered_model_alias(name, CHAMPION, version)
    _set_history(client, name, [*history, version])
    client.set_model_version_tag(name, version, "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    log.info("champion: %s -> %s (%s)", prev_version or "none", version, reason)
    return prev_version


def rollback(client: MlflowClient, name: str) -> tuple[str | None, str]:
    """Move ``champion`` back to the previous champion; returns (from_version, to_version)."""
    current = alias_version(client, name, CHAMPION)
    cur_version = str(current.version) if current is not None else None
    existing = {str(mv.version) for mv in client.search_model_versions(f"name='{name}'")}
    target = rollback_target(champion_history(client, name), cur_version, existing)
    if target is None:
        raise RegistryError(f"no previous champion of {name!r} to roll back to (champion: {cur_version or 'none'})")
    version, history = target
    client.set_registered_model_alias(name, CHAMPION, version)
    _set_history(client, name, history)
    if cur_version is not None:
        client.set_model_version_tag(
            name, cur_version, "rolled_back_at", datetime.now(UTC).isoformat(timespec="seconds")
        )
    log.info("champion rolled back: %s -> %s", cur_version or "none", version)
    return cur_version, version


@dataclass(frozen=True)
class Challenger:
    """A trained model to register as a new version, with what the champion gate compares: its test accuracy, its
    photo-benchmark accuracy (compared only with a champion measured on the same ``photo_benchmark``: an id of the
    photo set, renderer version, seed and size) and the warehouse comparison; ``tags`` and ``description`` go on
    the new version."""

    model_uri: str
    run_id: str
    test_accuracy: float
    macro_f1: float | None = None
    photo_accuracy: float | None = None
    photo_benchmark: str | None = None
    warehouse: WarehouseComparison | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None

    def version_tags(self) -> dict[str, str]:
        """The new version's tags: ``tags`` and the scores the gate of later versions reads back."""
        tags = {**self.tags, ACCURACY_KEY: f"{self.test_accuracy:.6f}", "run_id": self.run_id}
        if self.macro_f1 is not None:
            tags[MACRO_F1_KEY] = f"{self.macro_f1:.6f}"
        if self.photo_accuracy is not None:
            tags[PHOTO_ACCURACY_KEY] = f"{self.photo_accuracy:.6f}"
        if self.photo_benchmark is not None:
            tags[PHOTO_BENCHMARK_KEY] = self.photo_benchmark
        if self.warehouse is not None:
            tags[WAREHOUSE_ACCURACY_KEY] = f"{self.warehouse.challenger:.6f}"
        return tags


def register_and_gate(
    challenger: Challenger, name: str, *, force: bool = False, tracking_uri: str | None = None
) -> PromotionDecision:
    """Register ``challenger`` as a new version of ``name``, alias it ``challenger``, apply the champion gate
    (:func:`should_promote`; ``force`` promotes regardless). The registered model gets :data:`MODEL_DESCRIPTION`
    unless it has one."""
    import mlflow

    if tracking_uri:
        # Not set_registry_uri: it is sticky process state; the registry defaults to the tracking store.
        mlflow.set_tracking_uri(tracking_uri)
    client = client_for(tracking_uri)
    version = str(mlflow.register_model(challenger.model_uri, name, tags=challenger.version_tags()).version)
    if challenger.description:
        client.update_model_version(name, version, description=challenger.description)
    if not client.get_registered_model(name).description:  # one a person wrote in the UI is kept
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = alias_version(client, name, CHAMPION)
    ok, reason = should_promote(
        challenger.test_accuracy,
        version_metric(client, champion) if champion is not None else None,
        force,
        new_photo=challenger.photo_accuracy,
        champion_photo=_champion_photo(client, champion, challenger.photo_benchmark),
        warehouse=challenger.warehouse,
    )
    previous = str(champion.version) if champion is not None else None
    if ok:
        previous = promote(client, name, version, reason)
    else:
        log.info("champion stays at version %s: %s", previous, reason)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return PromotionDecision(version, ok, reason, previous, aliases)


def _champion_photo(client: MlflowClient, champion: ModelVersion | None, photo_benchmark: str | None) -> float | None:
    """The champion's photo-benchmark accuracy when it was measured on ``photo_benchmark`` (else None)."""
    if champion is None or not photo_benchmark or (champion.tags or {}).get(PHOTO_BENCHMARK_KEY) != photo_benchmark:
        return None
    return version_metric(client, champion, PHOTO_ACCURACY_KEY)


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """One row per version, newest first: version, aliases, test accuracy, macro F1, created, run id."""
    rows = []
    for found in client.search_model_versions(f"name='{name}'"):
        mv = client.get_model_version(name, str(found.version))  # search results omit aliases in some stores
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(mv.aliases or []),
                "test_accuracy": version_metric(client, mv, ACCURACY_KEY),
                "macro_f1": version_metric(client, mv, MACRO_F1_KEY),
                "epochs": epochs_label(mv.tags or {}),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
                "run_id": mv.run_id or "",
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def epochs_label(tags: dict[str, str]) -> str:
    """A version's epochs for people: ``44``, or ``5/44 cut`` when the time budget cut the run; ``-`` unknown."""
    trained, _, planned = tags.get(EPOCHS_KEY, "").partition("/")
    if not trained:
        return "-"
    return f"{trained}/{planned} cut" if tags.get(BUDGET_CUT_KEY) == "true" else trained


def format_table(rows: list[dict[str, Any]], history: list[str]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    header = f"{'version':>7}  {'aliases':<22} {'test_acc':>8}  {'macro_f1':>8}  {'epochs':<10}  "
    header += f"{'created (UTC)':<16}  run_id"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {num(r['test_accuracy']):>8}  "
            f"{num(r['macro_f1']):>8}  {r.get('epochs', '-'):<10}  {r['created']:<16}  {r['run_id']}"
        )
    lines.append(f"champion history (oldest first): {' -> '.join(history) or '-'}")
    return "\n".join(lines)


def require_model(client: MlflowClient, name: str, uri: str) -> None:
    """Raise :class:`RegistryError` naming the registered models when ``name`` is not one of them."""
    if model_exists(client, name):
        return
    names = sorted(m.name for m in client.search_registered_models(max_results=100))
    known = ", ".join(names) if names else "none (train one: ric train)"
    raise RegistryError(f"no model named {name!r} is registered at {redact(uri)}; registered models: {known}")


def require_version(client: MlflowClient, name: str, version: str) -> None:
    """Raise :class:`RegistryError` listing the versions of ``name`` when ``version`` is not one of them."""
    versions = sorted((int(mv.version) for mv in client.search_model_versions(f"name='{name}'")), reverse=True)
    if int(version) not in versions:
        listed = ", ".join(map(str, versions)) or "none"
        raise RegistryError(f"version {version} of {name!r} does not exist; its versions: {listed}")
