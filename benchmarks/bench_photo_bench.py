"""Benchmark: what the photo benchmark costs per photo (rendering, decoding, the preprocessing's photo path).

Usage: python benchmarks/bench_photo_bench.py [--photos 200] [--split val] [--seed 2026] [--slice plain|real]

Renders ``--photos`` items of the processed ``--split`` (from ``STORAGE_URI``; generated items when it is missing)
exactly as the photo benchmark does, in this one process, and prints the median and mean CPU milliseconds per photo
of: rendering (scene, resize, JPEG encoding), decoding alone (``decode_image`` + ``to_pixels``: the baseline every
photo pays in the API too), and the whole ``preprocess_bytes``; plus the megapixels and file sizes drawn. ``--slice
real`` renders the real-surface slice's photos instead (``data_processing.real_photos``: real photographs as
surfaces, hand-held). CPU time (``time.process_time``), so neighbours on a shared machine change it less than wall
time; the load average is printed beside it. The per-run cost of the benchmark in a training run is about (val +
test photos) x (render + preprocess) of CPU, spread over two lowest-priority workers.

Exit codes: 0 success (a measurement, not a check); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from _common import cpu_model

from common.hardware import describe as describe_cpu


def _items(split: str, n: int) -> np.ndarray:
    from common.settings import Settings
    from common.storage import ObjectNotFound, storage_from_settings
    from data_processing.dataset import load_split

    try:
        images = load_split(storage_from_settings(Settings.from_env()), split).images
    except (ObjectNotFound, OSError):
        rng = np.random.default_rng(0)  # no processed data: blobs of Fashion-MNIST's size
        images = np.zeros((n, 28, 28), np.uint8)
        for img in images:
            h, w = rng.integers(10, 28, 2)
            img[(28 - h) // 2 : (28 + h) // 2, (28 - w) // 2 : (28 + w) // 2] = rng.integers(60, 255)
    step = max(1, len(images) // n)
    return images[::step][:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=200, help="photos to render and preprocess (default 200)")
    p.add_argument("--split", default="val", help="processed split the items come from (default val)")
    p.add_argument("--seed", type=int, default=2026, help="rendering seed (default 2026, the benchmark's)")
    p.add_argument("--slice", choices=("plain", "real"), default="plain",
                   help="the photo benchmark's photos (plain, default) or the real-surface slice's (real)")  # fmt: skip
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    if args.photos < 1:
        p.error("--photos must be >= 1")

    from data_processing.preprocessing import decode_image, preprocess_bytes, to_pixels
    from model_training.photo_bench import photo_seed
    from model_training.photo_bench import render as render_photo

    split = f"real_{args.split}" if args.slice == "real" else args.split

    images = _items(args.split, args.photos)
    render, decode, prep, mps, sizes = [], [], [], [], []
    load = os.getloadavg()[0]
    for i, img in enumerate(images):
        t0 = time.process_time()
        photo = render_photo(img, photo_seed(args.seed, split, i), split)
        t1 = time.process_time()
        to_pixels(decode_image(photo.data))
        t2 = time.process_time()
        preprocess_bytes(photo.data)
        t3 = time.process_time()
        render.append(t1 - t0)
        decode.append(t2 - t1)
        prep.append(t3 - t2)
        mps.append(photo.params.megapixels)
        sizes.append(len(photo.data))

    def ms(xs: list[float]) -> str:
        return f"median {1e3 * statistics.median(xs):6.1f}  mean {1e3 * statistics.mean(xs):6.1f} ms"

    print(
        f"{len(images)} photos of {split} ({args.slice} slice), seed {args.seed}, CPU {cpu_model()}, load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"megapixels: median {statistics.median(mps):.2f}, mean {statistics.mean(mps):.2f}, max {max(mps):.1f}; "
          f"JPEG median {statistics.median(sizes) / 1e3:.0f} kB")  # fmt: skip
    print(f"render (CPU)                  : {ms(render)}")
    print(f"decode only (baseline, CPU)   : {ms(decode)}")
    print(f"preprocess_bytes (CPU)        : {ms(prep)}   (x{statistics.mean(prep) / statistics.mean(decode):.2f} "
          "the decode alone)")  # fmt: skip
    total = statistics.mean(render) + statistics.mean(prep)
    print(f"render + preprocess per photo : {1e3 * total:.1f} ms CPU -> 3,000 photos (1,000 val + 2,000 test) "
          f"{3000 * total:.0f} CPU-s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
