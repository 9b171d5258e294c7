"""Pieces only the benchmarks share: the seed-style baseline server, the champion lookup and a stand-in model for
machines without a trained champion (registered through ``tests.support.models``, the one way tests and benchmarks
register models). (Benchmarks run as scripts, so their folder is on sys.path.)"""

from __future__ import annotations

import numpy as np

MODEL_NAME = "refund-item-classifier"


def add_model_arguments(parser) -> None:
    """The arguments of the benchmarks that evaluate existing models: MLflow model URIs and where to find them."""
    parser.add_argument("models", nargs="+", metavar="MODEL", help="MLflow model URIs")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--storage-uri", default=None, help="store with processed/ (default: STORAGE_URI)")


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's word for it."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def champion_version(tracking_uri: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion").version)
    except MlflowException:
        return None


def register_stand_in(tracking_uri: str, images: np.ndarray, labels: np.ndarray) -> str:
    """A Fashion-MNIST-sized CNN (two conv blocks, ~225k parameters) trained for one epoch, registered as champion
    with a drift reference and its exported runtime, like training does. Accuracy is irrelevant to throughput;
    only used when the store has no real champion."""
    from tests.support.models import register_model, trained_cnn

    model = trained_cnn(images, labels, size="stand-in", epochs=1)
    return str(register_model(tracking_uri, model, images, labels, experiment="bench-stand-in").version)
