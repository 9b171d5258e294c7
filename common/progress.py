"""Progress bars for the long interactive stages (acquire, ingest, process, train, the nightly batch): items done out of
the total and the rate, on stderr, drawn only when stderr is a terminal. Under cron, in tests and when piped nothing
is drawn, so logs stay one line per event.

While a bar is drawn, log records that go to a terminal are written above it (the bar is cleared, the line written,
the bar redrawn) through their own handlers, so their level, format and filters (credentials masked) still apply.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, *, unit: str = "img") -> Iterator[tqdm]:
    """A bar for ``total`` items; call ``.update(n)`` as items are done. Silent unless stderr is a terminal."""
    # disable=None: tqdm draws only when its file is a TTY.
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        if bar.disable:
            yield bar
        else:
            with _log_above(logging.getLogger()):
                yield bar


class _AboveTheBars(logging.Handler):
    """Hands each record to ``inner`` with the bars cleared first and redrawn after."""

    def __init__(self, inner: logging.StreamHandler) -> None:
        super().__init__(inner.level)
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.inner.stream):
            self.inner.handle(record)


def _is_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return isinstance(handler, logging.StreamHandler) and stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextmanager
def _log_above(logger: logging.Logger) -> Iterator[None]:
    saved = logger.handlers[:]
    logger.handlers = [_AboveTheBars(h) if _is_terminal(h) else h for h in saved]
    try:
        yield
    finally:
        logger.handlers = saved
