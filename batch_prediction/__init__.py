"""batch_prediction."""
