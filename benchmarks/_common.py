"""Pieces the benchmarks share: the seed-style baseline server, a free port, the champion lookup and a stand-in
model for machines without a trained champion. (Benchmarks run as scripts, so their folder is on sys.path.)"""

from __future__ import annotations

import socket

import numpy as np

MODEL_NAME = "refund-item-classifier"

# The seed's approach: the Flask development server and ``model.predict`` per request (argv: port, tracking URI,
# model URI).
SEED_SERVER = r"""
import io, sys, numpy as np, mlflow, mlflow.keras
from flask import Flask, request, jsonify
from PIL import Image
mlflow.set_tracking_uri(sys.argv[2])
model = mlflow.keras.load_model(sys.argv[3])
app = Flask(__name__)
@app.route("/predict", methods=["POST"])
def predict():
    img = Image.open(io.BytesIO(request.files["file"].read())).convert("L").resize((28, 28))
    x = (np.asarray(img, dtype=np.float32) / 255.0).reshape(1, 28, 28, 1)
    probs = model.predict(x)[0]
    k = int(np.argmax(probs))
    return jsonify({"class_id": k, "confidence": float(probs[k])})
app.run(host="127.0.0.1", port=int(sys.argv[1]), debug=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def champion_version(tracking_uri: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion").version)
    except MlflowException:
        return None


def register_stand_in(tracking_uri: str, images: np.ndarray, labels: np.ndarray) -> str:
    """A Fashion-MNIST-sized CNN (two conv blocks) trained for one epoch, registered as champion with a drift
    reference. Accuracy is irrelevant to throughput; only used when the store has no real champion."""
    import keras
    import mlflow

    from common.tracking import ensure_experiment
    from model_training.model_io import log_keras_model
    from monitoring.reference import build_reference, log_reference

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    x = images[..., None].astype(np.float32) / 255.0
    model.fit(x, labels, epochs=1, batch_size=128, verbose=0)
    with mlflow.start_run(experiment_id=ensure_experiment("bench-stand-in", tracking_uri)):
        log_reference(build_reference(images[:512], model.predict(x[:512], verbose=0), source="bench"))
        info = log_keras_model(model, x[:2])
    mv = mlflow.register_model(info.model_uri, MODEL_NAME)
    mlflow.MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    return str(mv.version)
