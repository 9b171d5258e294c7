"""The decode sandbox's child process: THE preprocessing of one image at a time, read from stdin, answered on stdout.

Started and killed by :class:`data_processing.sandbox.DecodeSandbox` (``python -m data_processing.sandbox_child``),
which owns the wire format; this side only decodes. Not a command for people.
"""

from __future__ import annotations

import json
import sys

from data_processing import preprocessing as pp
from data_processing.sandbox import _ANSWER, _READY, _REQUEST


def _serve_one(data: bytes, max_pixels: int, max_image_pixels: int) -> tuple[int, bytes]:
    try:
        budget = pp.DecodeBudget(max_image_pixels=max_image_pixels)  # no time limit here: the parent keeps it
        return 0, pp.preprocess_bytes(data, max_pixels=max_pixels, budget=budget).tobytes()
    except pp.ImageError as exc:
        error = {"error": type(exc).__name__, "message": str(exc), "detail": exc.detail}
    except MemoryError:
        error = {"error": "ImageTooLarge", "message": "the image needs too much memory to decode"}
    except Exception as exc:  # a decoder's own error on hostile input: the image is refused, the child lives on
        error = {"error": "InvalidImage", "message": "the image data is truncated or corrupt", "detail": repr(exc)}
    return 1, json.dumps(error).encode()


def _read_exactly(stream, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def main() -> int:
    """The child: answer requests from stdin until it closes."""
    from common.resources import die_with_parent

    die_with_parent()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while (header := _read_exactly(stdin, _REQUEST.size)) is not None:
        size, max_pixels, max_image_pixels = _REQUEST.unpack(header)
        data = _read_exactly(stdin, size)
        if data is None:
            break
        status, body = _serve_one(data, max_pixels, max_image_pixels)
        stdout.write(_ANSWER.pack(status, len(body)) + body)
        stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
