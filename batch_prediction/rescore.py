"""What a rescore scores again: every input, the inputs under a key prefix, or the nights FROM..TO (pure functions;
no heavy imports: the command line validates with them before it takes the lock)."""

from __future__ import annotations

import re
from collections.abc import Callable

_DATE_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})")


def rescore_scope(scope: str, input_prefix: str) -> Callable[[str], bool]:
    """Which keys a rescore scores again: every input (``""`` or ``all``), the inputs under a key prefix, or those of
    the nights ``FROM..TO`` (the ``<input_prefix><YYYY-MM-DD>/`` folders, both ends included)."""
    if scope in ("", "all"):
        return lambda key: True
    if m := _DATE_RANGE.fullmatch(scope):
        first, last = m.groups()
        base = input_prefix.rstrip("/") + "/"

        def in_range(key: str) -> bool:
            night = key[len(base) :].split("/", 1)[0] if key.startswith(base) else ""
            return first <= night <= last and len(night) == 10

        return in_range
    return lambda key: key.startswith(scope)


def valid_rescore_scope(scope: str) -> bool:
    """``all``, a key prefix, or a date range of two ISO dates (a malformed range is a usage error)."""
    return ".." not in scope or _DATE_RANGE.fullmatch(scope) is not None
