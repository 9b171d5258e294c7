"""Model URIs and the concrete version they name (:class:`ModelInfo`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

REVIEW_THRESHOLD_TAG = "review_threshold_for_target"
# The unfamiliarity above which this version calls an item unfamiliar (inference.unfamiliarity), chosen on validation
# data when it was trained to flag a stated share of in-distribution photos.
UNFAMILIAR_THRESHOLD_TAG = "unfamiliar_threshold"
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


@dataclass(frozen=True)
class ModelInfo:
    """A concrete registered version (or an unregistered model URI) and how it was asked for."""

    name: str
    version: str
    alias: str | None
    run_id: str | None
    uri: str
    # The confidence below which this version's answers go to a person, chosen on validation photos when it was
    # trained (version tag ``review_threshold_for_target``); None for a version without one.
    review_threshold: float | None = None
    # The unfamiliarity score above which an item is called unfamiliar (version tag ``unfamiliar_threshold``); None
    # for a version without one (trained before its model computed the score).
    unfamiliar_threshold: float | None = None

    @property
    def pinned_uri(self) -> str:
        """``models:/name/version`` for a registered version, so an alias moving mid-load cannot mix versions."""
        return f"models:/{self.name}/{self.version}" if self.run_id else self.uri


def resolve_model(model_uri: str, tracking_uri: str | None = None) -> ModelInfo:
    """Turn ``models:/name@alias`` or ``models:/name/version`` into the concrete version it names now."""
    m = MODELS_URI.match(model_uri)
    if not m:
        return ModelInfo(name=model_uri, version="unregistered", alias=None, run_id=None, uri=model_uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias = m["name"], m["alias"]
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, m["version"])
    return ModelInfo(
        name=name,
        version=str(mv.version),
        alias=alias,
        run_id=mv.run_id,
        uri=model_uri,
        review_threshold=_threshold_tag((mv.tags or {}).get(REVIEW_THRESHOLD_TAG)),
        unfamiliar_threshold=_score_tag((mv.tags or {}).get(UNFAMILIAR_THRESHOLD_TAG)),
    )


def _threshold_tag(value: str | None) -> float | None:
    try:
        threshold = float(value) if value else None
    except ValueError:  # a hand-edited tag must not stop a version from serving: it falls back to the default
        return None
    return threshold if threshold is not None and 0.0 <= threshold <= 1.0 else None


def _score_tag(value: str | None) -> float | None:
    """An unfamiliar threshold from its tag: any finite number (the score is unbounded), else None."""
    try:
        threshold = float(value) if value else None
    except ValueError:
        return None
    return threshold if threshold is not None and math.isfinite(threshold) else None
