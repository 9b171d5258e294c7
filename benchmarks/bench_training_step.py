"""Training throughput of the default model under the training-step choices train.py makes, in the real input loop.

Usage: python benchmarks/bench_training_step.py [--arch cnn-fc192] [--batch-size 256] [--images 16384] [--epochs 4]
                                                [--rounds 2] [--variants stock,fused,bf16,bf16-photo]

Variants (each measured in a fresh child process, so none inherits another's traced functions, iterators or
memory; alternated for ``--rounds`` rounds so they share the machine's noise):

- ``stock``: Keras' composed BatchNorm, float32 (the baseline);
- ``fused``: TF's fused BatchNorm kernel, float32 (the third to fifth rounds' choice);
- ``bf16``: fused BatchNorm computing in bfloat16 (Keras ``mixed_bfloat16``; AVX-512 BF16 / AMX on this CPU);
- ``bf16-photo``: ``bf16`` with photo augmentation on half of the images (the input pipeline's extra cost);
- ``bf16-photo-distill``: ``bf16-photo`` with self-distillation (``distill=0.5``: the per-image table of past
  predictions, read and updated every step; ``model_training.fit.SelfDistillation``).

Each child builds the model exactly as ``train.py`` does (``build_model``, ``compile_for_training``,
``make_batches``), runs one ``fit`` over ``--epochs`` epochs of random images and times every epoch but the
first (tracing, warm-up). Prints the median wall and CPU seconds per 1,000 training images per variant and the
ratios to ``stock``.

The first variant listed is the baseline the ratios are taken against. Exit codes: 0 success (a measurement,
not a check); 1 a child failed; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common.hardware import describe as describe_cpu
from model_training.network import DEFAULT_ARCH

# variant -> (fused BatchNorm, mixed_bfloat16, share of images with photo augmentation, self-distillation weight)
VARIANTS = {
    "stock": (False, False, 0.0, 0.0),
    "fused": (True, False, 0.0, 0.0),
    "bf16": (True, True, 0.0, 0.0),
    "bf16-photo": (True, True, 0.5, 0.0),
    "bf16-photo-distill": (True, True, 0.5, 0.5),
}


def measure(variant: str, arch: str, batch_size: int, n_images: int, epochs: int) -> dict[str, list[float]]:
    """Seconds per 1,000 images (wall, CPU) of each timed epoch of one variant, in this process."""
    import keras
    import numpy as np

    from model_training.config import TrainConfig
    from model_training.data import make_batches
    from model_training.fit import compile_for_training, configure_tensorflow, distiller_for
    from model_training.network import build_model

    fused, bf16, photo, distill = VARIANTS[variant]
    cfg = TrainConfig(batch_size=batch_size, arch=arch, epochs=epochs, photo_aug=photo, distill=distill)
    configure_tensorflow()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_images)
    model = build_model(arch, seed=1, fused_batch_norm=fused, mixed_precision=bf16)
    batches = make_batches(images, labels, cfg)
    compile_for_training(model, cfg, batches.steps_per_epoch, distiller_for(cfg, n_images))
    wall: list[float] = []
    cpu: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch > 0:
                wall.append((time.perf_counter() - self.t) * 1000 / n_images)
                cpu.append((time.process_time() - self.c) * 1000 / n_images)

    model.fit(
        batches.dataset,
        steps_per_epoch=batches.steps_per_epoch,
        epochs=epochs,
        shuffle=False,  # as in model_training.fit.fit: the pipeline shuffles
        verbose=0,
        callbacks=[Timer()],
    )
    return {"wall": wall, "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch", default=DEFAULT_ARCH, help=f"architecture from model_training.network (default {DEFAULT_ARCH})"
    )
    p.add_argument("--batch-size", type=int, default=256, help="mini-batch size (default 256, train.py's)")
    p.add_argument("--images", type=int, default=16384, help="training images per epoch (default 16384)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per child; the first is not timed (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="child processes per variant, alternated (default 2)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, the first is the baseline (default {','.join(VARIANTS)})")  # fmt: skip
    p.add_argument("--variant", choices=sorted(VARIANTS), help="internal: measure one variant, print JSON")
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not chosen or any(v not in VARIANTS for v in chosen):
        p.error(f"--variants must name some of {', '.join(VARIANTS)}")

    if args.variant:
        print(json.dumps(measure(args.variant, args.arch, args.batch_size, args.images, args.epochs)))
        return 0

    samples: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in chosen}
    for _ in range(args.rounds):
        for variant in chosen:
            cmd = [sys.executable, __file__, "--variant", variant, "--arch", args.arch]
            cmd += ["--batch-size", str(args.batch_size), "--images", str(args.images), "--epochs", str(args.epochs)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            for key in ("wall", "cpu"):
                samples[variant][key] += result[key]
    print(
        f"arch {args.arch}, batch {args.batch_size}, {args.images} images x {args.epochs - 1} timed epochs "
        f"x {args.rounds} alternated child processes per variant"
    )
    base_name = chosen[0]
    base = statistics.median(samples[base_name]["wall"])
    for variant, s in samples.items():
        wall, cpu = statistics.median(s["wall"]), statistics.median(s["cpu"])
        print(
            f"  {variant:<18} wall {wall:.3f} s / 1,000 images (x{base / wall:.2f} vs {base_name}; 55,000-image "
            f"epoch {55 * wall:.0f} s), CPU {cpu:.3f} s / 1,000 images, samples {[round(w, 3) for w in s['wall']]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
