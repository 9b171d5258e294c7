"""Tests of `data_processing`."""
