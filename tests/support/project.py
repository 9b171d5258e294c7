"""The project's own packages, for tests that scan or lint the tree."""

PACKAGES = (
    "common",
    "data_ingestion",
    "data_processing",
    "inference",
    "model_training",
    "model_serving",
    "batch_prediction",
    "monitoring",
    "ric",
)
