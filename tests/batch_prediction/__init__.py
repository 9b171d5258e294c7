"""Tests of `batch_prediction`."""
