"""Training-step cost of the default model: Keras' composed BatchNorm vs TF's fused kernel, in the real batch loop.

Usage: python benchmarks/bench_training_step.py [--arch cnn] [--batch-size 256] [--images 10240] [--rounds 5]

Builds the architecture twice from the same seed (stock ``BatchNormalization`` = the baseline, and the
``FusedBatchNormalization`` training variant that ``train.py`` uses), compiles both exactly as ``train.py`` does,
and alternates one epoch of each over the same ``make_batches`` pipeline (shuffling + augmentation included), so
both see the same machine noise. Prints wall and CPU seconds per 1,000 training images (medians) and the ratio.

Exit codes: 0 always (a measurement, not a check).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cnn", help="architecture from model_training.model (default cnn)")
    p.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default 256, train.py's)")
    p.add_argument("--images", type=int, default=10240, help="training images per timed epoch (default 10240)")
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per variant, alternated (default 5)")
    args = p.parse_args(argv)

    from model_training.model import build_model
    from model_training.train import TrainConfig, compile_for_training, configure_tensorflow, make_batches

    threads = configure_tensorflow()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.images)
    cfg = TrainConfig(batch_size=args.batch_size, arch=args.arch)
    variants = {}
    for name, fused in (("keras BatchNormalization (baseline)", False), ("fused BatchNorm", True)):
        model = build_model(args.arch, seed=1, fused_batch_norm=fused)
        # One finite epoch per fit: Keras reads it to the end, so no half-read iterator is torn down between fits.
        batches = make_batches(images, labels, cfg, epochs=1)
        compile_for_training(model, cfg, batches.steps_per_epoch)
        model.fit(batches.dataset, epochs=1, verbose=0)  # trace + warm up
        variants[name] = (model, batches.dataset, [])
    for _ in range(args.rounds):
        for model, batches, samples in variants.values():
            t, c = time.perf_counter(), time.process_time()
            model.fit(batches, epochs=1, verbose=0)  # the same seeded epoch each round: same work
            samples.append(
                ((time.perf_counter() - t) * 1000 / args.images, (time.process_time() - c) * 1000 / args.images)
            )
    print(f"arch {args.arch}, batch {args.batch_size}, {args.images} images x {args.rounds} alternated epochs, "
          f"TF intra-op threads {threads}")  # fmt: skip
    medians = {}
    for name, (_, _, samples) in variants.items():
        wall = float(np.median([s[0] for s in samples]))
        cpu = float(np.median([s[1] for s in samples]))
        medians[name] = wall
        print(f"  {name:<38} wall {wall:.3f} s / 1,000 images (samples {[round(s[0], 2) for s in samples]}), "
              f"CPU {cpu:.3f} s / 1,000 images")  # fmt: skip
    base, fused = medians.values()
    print(
        f"  fused vs baseline: x{base / fused:.2f} faster (55,000-image epoch: {55 * base:.0f} s -> {55 * fused:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
