"""The short training mode's starting point: the champion's network and weights (``train --finetune``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.settings import Settings


class NoChampion(RuntimeError):
    """There is no champion to start from (or it cannot be loaded)."""


@dataclass(frozen=True)
class Start:
    version: str
    arch: str
    weights: list[Any]


def champion_start(settings: Settings) -> Start:
    """The champion's architecture (its run's ``arch`` param) and network weights (the calibration temperature is
    not a weight, nor is the unfamiliarity score's head: the run calibrates and fits them again)."""
    from mlflow import MlflowClient

    from inference.loading import load_keras
    from inference.tta import tta_of
    from inference.unfamiliarity import network_of
    from inference.versions import resolve_model

    uri = settings.mlflow_tracking_uri
    try:
        info = resolve_model(f"models:/{settings.model_name}@champion", uri)
        arch = MlflowClient(tracking_uri=uri).get_run(info.run_id).data.params["arch"]
        predictor = load_keras(info, uri)
    except Exception as exc:
        raise NoChampion(f"no champion of {settings.model_name!r} to fine-tune at {uri}: {exc}") from exc
    base, _ = tta_of(predictor.runtime.model)
    return Start(info.version, arch, network_of(base).get_weights())
