"""model_training."""
