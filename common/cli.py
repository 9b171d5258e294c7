"""What the stage scripts share on their command line: argparse value types and reading the settings (a bad value
is a usage error, exit 2)."""

from __future__ import annotations

import argparse
import sys

from common.settings import Settings


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def read_settings(prog: str) -> Settings | None:
    """The environment's settings, or None after printing ``prog: error: <which variable is wrong>`` (the caller
    exits 2: a bad setting is a usage error)."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
