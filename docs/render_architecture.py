"""Render ``architecture.png`` from ``docs/architecture.dot`` with Graphviz and stamp the source's SHA-256 into it.

The PNG carries a ``tEXt`` chunk ``source-sha256`` (the SHA-256 of the exact source bytes it was rendered from),
so a test can tell without Graphviz whether the committed picture is stale: ``tests/project/test_architecture.py``.

Usage: python docs/render_architecture.py [--source docs/architecture.dot] [--output architecture.png] [--check]

Exit codes: 0 rendered (or, with --check, the PNG matches its source); 1 --check found a stale or unstamped PNG;
2 usage error, Graphviz ``dot`` missing, or rendering failed (nothing is written then).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from common.logging import setup_logging
from common.settings import PROJECT_ROOT

HASH_KEY = "source-sha256"
SOURCE_KEY = "source"
DEFAULT_SOURCE = PROJECT_ROOT / "docs" / "architecture.dot"
DEFAULT_OUTPUT = PROJECT_ROOT / "architecture.png"

log = logging.getLogger("render_architecture")


def source_sha256(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def stamp_png(png: bytes, *, sha256: str, source_name: str, software: str = "") -> bytes:
    """Re-encode ``png`` with the source's hash (and name) as tEXt chunks; pixels are unchanged."""
    image = Image.open(io.BytesIO(png))
    info = PngImagePlugin.PngInfo()
    info.add_text(HASH_KEY, sha256)
    info.add_text(SOURCE_KEY, source_name)
    if software:
        info.add_text("Software", software)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, optimize=True)
    return out.getvalue()


def embedded_sha256(png_path: Path) -> str | None:
    """The source hash stamped into a PNG, or None when it carries none."""
    with Image.open(png_path) as image:
        return getattr(image, "text", {}).get(HASH_KEY)


def render_dot(source: Path, dot: str = "dot") -> bytes:
    """Graphviz ``dot -Tpng``; raises RuntimeError with Graphviz's message on failure."""
    result = subprocess.run([dot, "-Tpng", str(source)], capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"dot failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Graphviz source (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--check", action="store_true", help="do not render: exit 1 when the PNG was not rendered from the source"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    if not args.source.is_file():
        log.error("source %s does not exist", args.source)
        return 2
    digest = source_sha256(args.source)
    if args.check:
        stamped = embedded_sha256(args.output) if args.output.is_file() else None
        if stamped != digest:
            log.error("%s is stale: stamped %s, source %s; run `make architecture`", args.output, stamped, digest)
            return 1
        print(f"{args.output} matches {args.source} (sha256 {digest[:12]})")
        return 0

    dot = shutil.which("dot")
    if dot is None:
        log.error("Graphviz `dot` not found: install it (apt-get install -y graphviz) and rerun")
        return 2
    version = subprocess.run([dot, "-V"], capture_output=True, text=True, check=False).stderr.strip()
    try:
        png = render_dot(args.source, dot)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    try:
        name = str(args.source.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        name = args.source.name
    stamped = stamp_png(png, sha256=digest, source_name=name, software=f"{version}; docs/render_architecture.py")
    write_atomic(args.output, stamped)
    with Image.open(args.output) as image:
        width, height = image.size
    print(f"wrote {args.output} ({width}x{height}, {len(stamped) / 1024:.0f} KiB) from {name} (sha256 {digest[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
