"""Every variable the project reads from the environment, its effective value and its meaning.

Credentials are masked (secrets entirely, URIs' user info) and a variable left unset shows the default in effect;
the variables themselves are defined, typed and checked by the one settings object (``common.settings``).

Usage: python -m common.list_settings      (also: ric settings, make settings)

Exit codes: 0 printed; 2 at least one variable has an invalid value (each is named in its own line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from common.cli import command_parser
from common.settings import Settings, SettingsError, describe


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line of ``ric settings`` (no flags: it lists)."""
    return command_parser("settings", __doc__)


def main(argv: list[str] | None = None) -> int:
    """Print every variable the project reads, its effective value and its meaning; see the module docstring."""
    build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        for message in exc.errors:
            print(f"ric settings: error: {message}", file=sys.stderr)
        return 2
    print(f"{'VARIABLE':<28} {'EFFECTIVE VALUE ((...): unset, the default)':<44} MEANING")
    for name, value, doc in describe(settings):
        print(f"{name:<28} {value:<44} {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
