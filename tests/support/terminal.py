"""A pseudo-terminal in place of stderr, for tests of what only a terminal shows (the progress bars)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker


@dataclass
class Terminal:
    text: str = ""  # what was written to the terminal, once the block has ended


@contextlib.contextmanager
def stderr_on_a_terminal(columns: int = 160) -> Iterator[Terminal]:
    """``sys.stderr`` is a pseudo-terminal (``isatty()`` is true) ``columns`` wide for the duration of the block;
    the yielded :class:`Terminal` holds what was written to it once the block has ended."""
    # multiprocessing's resource tracker, started by the first spawned process, keeps the stderr it was started
    # with open for the life of the test process: started inside the block it would hold the terminal open, and
    # the block would wait for its end forever.
    resource_tracker.ensure_running()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # read as it is written: a full pty buffer would block the writer
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    terminal = Terminal()
    try:
        with open(slave, "w", buffering=1, closefd=True) as stderr, contextlib.redirect_stderr(stderr):
            yield terminal
    finally:
        reader.join()
        os.close(master)
        terminal.text = b"".join(chunks).decode(errors="replace")
