"""Fit the photo path's item finder on composites of training items and write its weights module.

Usage: python model_training/fit_segmenter.py [--real-per-class N] [--plain-per-class N] [--epochs N] [--seed N]
                                              [--out PATH] [--workers N] [--storage-uri URI] [-v]
       (also: ric fit-segmenter ...)

The photo path finds the item with a small per-pixel network (:mod:`data_processing.segmenter`) whose weights are
the generated module ``data_processing/segmenter_weights.py``, committed with the code like any other constant of
THE preprocessing: a change to it changes every photo's model input, so it is reviewed and benchmarked
(``benchmarks/bench_photo_path.py --previous colour``). This script remakes it: training items (processed split
``train``) photographed by both renderers, each pixel of each photo's low-resolution copy labelled by the item's
true coverage (:mod:`model_training.segmenter_fit`). About 2 minutes of 2 cores at the defaults.

Exit codes: 0 written; 2 bad arguments or settings; 3 processed data missing or unusable (run
``python data_processing/process.py`` first), or the store cannot be read; 4 the output cannot be written.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.settings import PROJECT_ROOT, Settings
from model_training.config import DataMissing

log = logging.getLogger("model_training.fit_segmenter")

EXIT_OK, EXIT_USAGE, EXIT_NO_DATA, EXIT_WRITE = 0, 2, 3, 4
PROG = "ric fit-segmenter"
DEFAULT_OUT = PROJECT_ROOT / "data_processing" / "segmenter_weights.py"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    env = settings or Settings()
    p = command_parser("fit-segmenter", __doc__)
    p.add_argument("--real-per-class", type=int, default=200,
                   help="training items per class photographed on real surfaces (default %(default)s)")  # fmt: skip
    p.add_argument("--plain-per-class", type=int, default=100,
                   help="training items per class photographed on plain backdrops (default %(default)s)")  # fmt: skip
    p.add_argument("--epochs", type=positive_int, default=4, help="passes over the pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=2026, help="rendering seed (default %(default)s; the fit's is 0)")
    p.add_argument("--out", type=Path, default=None, help="the weights module to write (default: "
                   "data_processing/segmenter_weights.py, the one the photo path imports)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="rendering processes (default: all cores, %(default)s here)")  # fmt: skip
    p.add_argument(
        "--storage-uri", default=None, help=f"store with processed/ (default {from_env(env, 'storage_uri')})"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(help_settings()).parse_args(argv)
    settings = read_settings(PROG)
    if settings is None:
        return EXIT_USAGE
    if args.real_per_class < 0 or args.plain_per_class < 0 or args.real_per_class + args.plain_per_class == 0:
        fail(PROG, "--real-per-class and --plain-per-class must be >= 0, and not both 0")
        return EXIT_USAGE
    setup_logging(args.verbose, settings.log_level)
    settings = settings.with_overrides(storage_uri=args.storage_uri)
    from model_training import segmenter_fit
    from model_training.data import load_splits

    try:
        train, _, _ = load_splits(settings)
    except DataMissing as exc:
        fail(PROG, str(exc))
        return EXIT_NO_DATA
    t0 = time.perf_counter()
    pixels = segmenter_fit.training_pixels(
        train.images,
        train.labels,
        real_per_class=args.real_per_class,
        plain_per_class=args.plain_per_class,
        seed=args.seed,
        workers=args.workers,
    )
    log.info("%d pixels of %d photos, %.1f %% item, in %.0f s", len(pixels.is_item), pixels.photos,
             100 * pixels.item_share, time.perf_counter() - t0)  # fmt: skip
    layers, quality = segmenter_fit.fit(pixels, epochs=args.epochs)
    provenance = (
        f"python model_training/fit_segmenter.py --real-per-class {args.real_per_class} --plain-per-class "
        f"{args.plain_per_class} --epochs {args.epochs} --seed {args.seed}\n"
        f"{pixels.photos} photos ({len(pixels.is_item)} pixels, {100 * pixels.item_share:.1f} % item); held-out "
        f"pixel accuracy {100 * quality['held_out_pixel_accuracy']:.2f} %, loss {quality['held_out_loss']:.4f}."
    )
    text = segmenter_fit.weights_module(layers, provenance)
    out = args.out or DEFAULT_OUT
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(PROG, f"cannot write {out}: {exc}")
        return EXIT_WRITE
    print(f"wrote {out}: {provenance.splitlines()[1]}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
