"""Tests of `model_training`."""
