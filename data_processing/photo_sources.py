"""Real photographs the harder photo benchmarks are built from: read from an installed package, never committed.

Usage: python -m data_processing.photo_sources   (prints the manifest and checks every file)

In code: ``load_source("gravel")`` -> uint8 array (H, W) or (H, W, 3); ``SOURCES`` is the manifest (file, package,
licence, origin, SHA-256).

Every source ships inside the scikit-image wheel (``skimage/data/``, installed from PyPI with the project's
requirements), so nothing is downloaded at run time and no image is stored in this repository. Only files that
scikit-image's own documentation marks as CC0 or public domain are used. A file is checked against the SHA-256 in
the manifest when it is first read: a different scikit-image release with a changed image would otherwise change
the benchmark silently; :class:`SourceMissing` says which file and why.

Exit codes (as a script): 0 every source present and unchanged, 1 one or more missing or changed, 2 bad arguments.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Source:
    """One real photograph: where it is, what it may be used for, and why we may use it."""

    name: str
    file: str  # inside the package
    role: str  # "surface" (a backdrop the items lie on) or "object" (a thing that is not one of the 10 classes)
    licence: str
    origin: str
    sha256: str
    package: str = "scikit-image"
    module: str = "skimage"


_SK = "scikit-image data, its docstring: "
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("brick", "data/brick.png", "surface", "CC0-1.0", _SK + "CC0Textures Bricks25",
               "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
        Source("grass", "data/grass.png", "surface", "CC0-1.0", _SK + "CC0Textures (grass)",
               "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
        Source("gravel", "data/gravel.png", "surface", "CC0-1.0", _SK + "CC0Textures Gravel04",
               "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
        # The wooden table around the cup (the right-hand strip), as a surface; the cup itself as an object.
        Source("coffee", "data/coffee.png", "surface+object", "CC0-1.0", _SK + "photographer Rachel Michetti",
               "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
        Source("chelsea", "data/chelsea.png", "object", "CC0-1.0", _SK + "photographer Stefan van der Walt",
               "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
        Source("astronaut", "data/astronaut.png", "object", "public domain", _SK + "NASA (Eileen Collins)",
               "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
        Source("rocket", "data/rocket.jpg", "object", "public domain", _SK + "SpaceX",
               "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
        Source("camera", "data/camera.png", "object", "CC0-1.0", _SK + "photographer Lav Varshney",
               "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
        Source("clock", "data/clock_motion.png", "object", "public domain", _SK + "photographer Stefan van der Walt",
               "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955"),
        Source("horse", "data/horse.png", "object", "CC0-1.0", _SK + "Andreas Preuss (marauder)",
               "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
        Source("coins", "data/coins.png", "object", "public domain", _SK + "Galerie Numismatique (no known copyright)",
               "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    )
}  # fmt: skip


class SourceMissing(RuntimeError):
    """A source photograph is not installed or is not the file the manifest names."""


def source_path(name: str) -> Path:
    src = SOURCES[name]
    try:
        root = resources.files(src.module)
    except ModuleNotFoundError as exc:
        raise SourceMissing(f"{src.file}: the package {src.package} is not installed (pip install it)") from exc
    return Path(str(root.joinpath(src.file)))


@cache
def load_source(name: str) -> np.ndarray:
    """The photograph ``name`` as a uint8 array, (H, W) for grey, (H, W, 3) for colour (alpha dropped)."""
    from PIL import Image

    src = SOURCES[name]
    path = source_path(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceMissing(f"{src.file} of {src.package}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != src.sha256:
        raise SourceMissing(f"{src.file} of {src.package} changed (sha256 {digest[:12]}, expected {src.sha256[:12]})")
    import io

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L") if img.mode in ("L", "1", "I", "I;16") else img.convert("RGB")
        arr = np.array(img, dtype=np.uint8)
    arr.setflags(write=False)
    return arr


def main(argv: list[str] | None = None) -> int:
    """Print the manifest and check every file (exit 1 if any is missing or changed)."""
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    bad = 0
    for src in SOURCES.values():
        try:
            shape = load_source(src.name).shape
            status = f"ok {shape}"
        except SourceMissing as exc:
            status, bad = f"MISSING: {exc}", bad + 1
        print(f"{src.name:10s} {src.package}:{src.file:22s} {src.role:15s} {src.licence:14s} {status}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
