"""Tests of `model_serving`."""
