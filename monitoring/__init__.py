"""Drift: the per-version reference, tests of a window of recent items against it, how well they detect shifts."""
