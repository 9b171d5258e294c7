"""Render the photo benchmark into the local cache before training, so the training run has its whole budget.

Usage: python model_training/render_photos.py [--seed N] [--val-per-class N] [--test-per-class N]
                                              [--real-test-per-class N] [--real-val-per-class N]
                                              [--unfamiliar-per-kind N] [--head-per-kind N] [--head-val-per-kind N]
                                              [--head-per-class N] [--workers N] [--storage-uri URI] [-v]
       (also: ric render-photos ...)

Every training run scores its model on the photo benchmark: the validation and test items rendered as warehouse
photos and brought through the preprocessing (:mod:`model_training.photo_bench`). A run renders what the cache
(``DATA_DIR/cache/photo-bench``, keyed by the items, the seed and the code of the renderer and the preprocessing)
does not have, in low-priority processes beside the fit. On a fresh clone that is ~160 s of CPU taken from the
first run's time budget: it trained 43 epochs where every later run with the same seed trained 44, so the first
run of a clone was a different model from its reruns. ``make demo`` runs this step between processing and training;
the defaults are the training recipe's (``TrainConfig``: seed 2026, 100 validation and 200 test photos per class,
100 test and 50 validation items per class on real surfaces, the ``photo_real_*`` slice, and 200 unfamiliar test
photos per kind, the out-of-distribution benchmark; the outlier-exposure head's sets: 150 unfamiliar training and
100 validation photos per kind and 50 training items per class by each renderer, plain and real surface; 0 renders
none of those).

Exit codes: 0 success (rendered, or already in the cache); 2 bad arguments or settings; 3 processed data missing or
unusable (run ``python data_processing/process.py`` first), or the store cannot be read (one line: what to check).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from common.cli import command_parser, fail, from_env, help_settings, positive_int, read_settings
from common.logging import setup_logging
from common.settings import Settings
from model_training.config import DataMissing, TrainConfig

log = logging.getLogger("model_training.render_photos")

EXIT_OK, EXIT_USAGE, EXIT_NO_DATA = 0, 2, 3
PROG = "ric render-photos"


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; the defaults are the training recipe's (``TrainConfig``) and the environment's."""
    env = settings or Settings()
    d = TrainConfig()
    p = command_parser("render-photos", __doc__)
    p.add_argument("--seed", type=int, default=d.photo_seed, help="rendering seed")
    p.add_argument("--val-per-class", type=positive_int, default=d.photo_val_per_class,
                   help="validation photos per class")  # fmt: skip
    p.add_argument("--test-per-class", type=positive_int, default=d.photo_test_per_class,
                   help="test photos per class")  # fmt: skip
    p.add_argument("--real-test-per-class", type=int, default=d.photo_real_test_per_class,
                   help="test photos per class on real surfaces, the photo_real slice (0 = none)")  # fmt: skip
    p.add_argument("--real-val-per-class", type=int, default=d.photo_real_val_per_class,
                   help="validation photos per class on real surfaces, where the unfamiliar threshold is chosen "
                   "(0 = none)")  # fmt: skip
    p.add_argument("--unfamiliar-per-kind", type=int, default=d.unfamiliar_test_per_kind,
                   help="unfamiliar test photos (not clothing) per kind, the out-of-distribution benchmark "
                   "(0 = none)")  # fmt: skip
    p.add_argument(
        "--head-per-kind",
        type=int,
        default=d.unfamiliar_train_per_kind,
        help="unfamiliar training photos per kind the unfamiliarity head is fitted on (0 = no head's sets)",
    )
    p.add_argument("--head-val-per-kind", type=int, default=d.unfamiliar_val_per_kind,
                   help="unfamiliar validation photos per kind the head's penalty is chosen on")  # fmt: skip
    p.add_argument(
        "--head-per-class",
        type=int,
        default=d.unfamiliar_fit_per_class,
        help="training items per class photographed by each renderer, the head's in-distribution side",
    )
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
    setup_logging(args.verbose, settings.log_level)
    settings = settings.with_overrides(storage_uri=args.storage_uri)
    # Imported here: the splits' loader brings TensorFlow (~4 s), which --help need not wait for.
    from model_training import photo_bench
    from model_training.data import load_splits

    try:
        train, val, test = load_splits(settings)
    except DataMissing as exc:
        fail(PROG, str(exc))
        return EXIT_NO_DATA
    t0 = time.perf_counter()
    head = (args.head_per_kind, args.head_val_per_kind, args.head_per_class) if args.head_per_kind > 0 else (0, 0, 0)
    pending, executor = photo_bench.start_benchmark(
        (train, val, test),
        data_dir=settings.data_dir,
        seed=args.seed,
        sizes=photo_bench.BenchmarkSizes(
            args.val_per_class,
            args.test_per_class,
            args.real_test_per_class,
            args.real_val_per_class,
            args.unfamiliar_per_kind,
            head,
        ),
        workers=args.workers,
    )
    try:
        cached = all(p.from_cache for p in pending.values())
        sets = {split: p.result() for split, p in pending.items()}
    finally:
        if executor is not None:
            executor.shutdown()
    how = "already in the cache" if cached else f"rendered in {time.perf_counter() - t0:.0f} s"
    failed = sum(s.failed for s in sets.values())
    real = sum(len(sets[n]) for n in ("real_val", "real_test") if n in sets)
    unfamiliar = len(sets[photo_bench.UNFAMILIAR_TEST]) if photo_bench.UNFAMILIAR_TEST in sets else 0
    extra = (f" + {real} on real surfaces" if real else "") + (f" + {unfamiliar} unfamiliar" if unfamiliar else "")
    head_sets = ("train", "real_train", photo_bench.UNFAMILIAR_TRAIN, photo_bench.UNFAMILIAR_VAL)
    for_head = sum(len(sets[n]) for n in head_sets if n in sets)
    extra += f" + {for_head} for the unfamiliarity head" if for_head else ""
    print(
        f"photo benchmark: {len(sets['val'])} validation + {len(sets['test'])} test photos{extra} "
        f"(seed {args.seed}), {how}"
        f"{f', {failed} refused by the preprocessing' if failed else ''} -> {photo_bench.cache_dir(settings.data_dir)}",
        flush=True,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
