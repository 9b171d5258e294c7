"""Tests of `data_ingestion`."""
