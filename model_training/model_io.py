"""Logging a Keras model to MLflow with its signature and input example.

``mlflow.keras.log_model(..., input_example=...)`` fails in MLflow 3.17/3.18: the Keras flavor writes the
example into the model folder before creating that folder. :func:`log_keras_model` logs through
``Model.log`` with a flavor shim that creates the folder first; the result is an ordinary ``keras``-flavor
model (loadable with ``mlflow.keras.load_model`` and ``mlflow.pyfunc.load_model``).
"""

from __future__ import annotations

import os
import types
from typing import Any

import numpy as np


def _save_keras_model(path: str, **kwargs: Any) -> None:
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


_KERAS_FLAVOR_SHIM = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)


def log_keras_model(model: Any, input_example: np.ndarray, *, name: str = "model", **kwargs: Any) -> Any:
    """Log ``model`` in the active run with a signature inferred from ``input_example``; returns ModelInfo."""
    from mlflow.models import Model, infer_signature

    output = np.asarray(model(input_example, training=False))
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=_KERAS_FLAVOR_SHIM,
        model=model,
        signature=infer_signature(input_example, output),
        input_example=input_example,
        **kwargs,
    )
