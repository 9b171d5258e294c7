"""Stage 3: train the classifier (train.py wires the library modules), evaluate it, log it to MLflow, register it."""
