"""model_serving."""
