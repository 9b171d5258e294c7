"""What the stage scripts share on their command line: one parser style (``ric <command>``, each flag's default and
the variable behind it, the exit codes), argparse value types, reading the settings (every invalid variable named,
exit 2) and one-line error messages."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

from common.redact import redact
from common.settings import Settings, SettingsError

GROUP = "ric"  # the command group every script belongs to (``ric <command>``; ric/__init__.py)
SETTINGS_HINT = "ric settings lists every variable with its effective value"
SETTINGS_NOTE = f"Settings come from the environment ({SETTINGS_HINT}); flags override them."


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
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


# An item of a list in a docstring: "0   the night is scored" (exit codes) or "- a bullet"
_ITEM = re.compile(r"(\S+\s{2,}|[-*]\s+)")


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions and epilogs are re-wrapped to the terminal's width with their paragraphs and list items kept (an
    exit code's text hangs under its text); each flag's help wraps and ends with its default (unless the help
    already states it or there is none)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in re.split(r"\n\s*\n", text.strip("\n")):
            items: list[list[Any]] = []  # [indent of the first line, hanging indent, words]
            for line in para.splitlines():
                body = line.lstrip()
                lead = len(line) - len(body)
                item = _ITEM.match(body) if lead else None
                if not items or item or lead < items[-1][0]:
                    items.append([lead, lead + (item.end() if item else 0), body])
                else:
                    items[-1][2] += " " + body
            lines = []
            for lead, hang, body in items:
                lines += textwrap.wrap(
                    body,
                    width,
                    initial_indent=indent + " " * lead,
                    subsequent_indent=indent + " " * hang,
                    break_on_hyphens=False,
                ) or [""]
            paragraphs.append("\n".join(lines))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if quiet or not action.option_strings or "default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def exit_codes(doc: str | None) -> str:
    """The ``Exit codes`` paragraph(s) of a script's docstring: the one text both its docstring and its --help show."""
    text = doc or ""
    start = text.find("Exit codes")
    if start < 0:
        raise ValueError("the script's docstring documents no exit codes")
    return text[start:].strip()


def command_parser(name: str, doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of ``ric <name>``: the docstring's first paragraph as description, its exit codes as epilog.

    The stage scripts keep working as ``python <stage>/<script>.py`` and ``python -m <stage>.<script>``; their help
    names them the way the command group does."""
    description = (doc or "").strip().split("\n\n")[0].replace("``", "")
    return argparse.ArgumentParser(
        prog=f"{GROUP} {name}",
        description=description,
        epilog=f"{exit_codes(doc).replace('``', '')}\n\n{SETTINGS_NOTE}",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        **kwargs,
    )


def variable(group: Any, name: str) -> str:
    """The environment variable behind field ``name`` of a settings group (``Settings``, ``ServingSettings``...)."""
    for f in fields(group):
        if f.name == name:
            return str(f.metadata["env"])
    raise KeyError(name)


def from_env(group: Any, name: str) -> str:
    """``"$VAR: value"`` for a flag's help: the variable a flag overrides and its effective value (credentials
    masked), e.g. ``default $STORAGE_URI: /srv/ric/data/store``."""
    f = next(f for f in fields(group) if f.name == name)
    value = getattr(group, name)
    shown = f.metadata.get("shown") if value in (None, "") else redact(str(value))
    return f"${f.metadata['env']}: {shown or 'unset'}"


def read_settings(
    prog: str, groups: Iterable[str] = (), *, choices: Mapping[str, Iterable[str]] | None = None
) -> Settings | None:
    """The environment's settings (core + ``groups``, the stages ``prog`` uses), or None after printing one line per
    invalid variable, ``<prog>: error: VAR must be ..., got '...'``, the last with where to look (the caller exits 2:
    a usage error). Every MLflow call of the process is bounded from here on
    (:func:`common.tracking.bound_mlflow_calls`)."""
    from common.tracking import bound_mlflow_calls

    try:
        settings = Settings.from_env(groups=groups, choices=choices)
    except SettingsError as exc:
        for n, message in enumerate(exc.errors, start=1):
            hint = f" ({SETTINGS_HINT})" if n == len(exc.errors) else ""
            print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        return None
    bound_mlflow_calls()
    return settings


def help_settings() -> Settings:
    """The environment's settings for building a parser (its defaults and help): never fails, an invalid variable
    keeps its default there, and :func:`read_settings` reports it when the command runs."""
    return Settings.from_env(lenient=True)


def fail(prog: str, message: str) -> None:
    """Print ``<prog>: error: <message>`` on stderr, on one line (credentials masked)."""
    one_line = " ".join(redact(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)


def explain(exc: BaseException, settings: Settings) -> str:
    """One line for why a command could not get its inputs: the tracking server's or the store's trouble with what to
    check (:func:`common.tracking.tracking_error_message`, :func:`common.storage_errors.storage_error_message`), else
    the exception's own words."""
    from common.storage import is_storage_error
    from common.storage_errors import storage_error_message
    from common.tracking import is_unreachable, tracking_error_message

    if is_unreachable(exc):
        return tracking_error_message(exc, settings.mlflow_tracking_uri)
    if is_storage_error(exc):
        return storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a container stop, a scheduler's timeout) ends the command the way Ctrl-C
    does: a ``KeyboardInterrupt`` that its cleanup sees (an MLflow run ends KILLED), not a silent death that leaves
    it RUNNING. The previous handler comes back afterwards."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
