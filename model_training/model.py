"""The classifier's architecture, its cost model and the training-time augmentation.

Pure functions and a Keras model factory; no I/O. The default architecture (``"cnn"``) is a VGG-style stack
with BatchNorm, chosen by measurement on the 2-core target machine (see docs/training.md): a single cheap
convolution at full 28x28 resolution, then two 3x3 convolutions at 14x14 and two at 7x7, dropout, and a
dense softmax head. ``"tiny"`` exists for tests and quick smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from common.labels import NUM_CLASSES

INPUT_SHAPE = (28, 28, 1)


@dataclass(frozen=True)
class ArchSpec:
    """Stages of 3x3 conv(+BN)+ReLU blocks: ``stages[i] = (filters, n_convs)``; max-pool between stages."""

    stages: tuple[tuple[int, int], ...]
    head_dropout: float
    stage_dropout: float  # after the i-th pooling: stage_dropout * (i + 1)
    batch_norm: bool = False
    # With Keras' composed BatchNorm, BN at full 28x28 resolution cost ~15-38 % of a training step on CPU; with
    # the fused kernel a probe under load showed little extra cost (not measured on a quiet machine).
    stem_batch_norm: bool = False


ARCHITECTURES: dict[str, ArchSpec] = {
    # 128 filters at 7x7 (v1 had 96): +30 % MACs but only ~+8 % step time on the 2-core CPU, more capacity;
    # lighter head dropout than v1, which under-fitted in its short schedule (train acc ~ val acc). Versions 2-3.
    "cnn": ArchSpec(stages=((32, 1), (48, 2), (128, 2)), head_dropout=0.15, stage_dropout=0.05, batch_norm=True),
    # 192 filters at 7x7 + stem BatchNorm (55 MFLOPs): 93.89 % test in 15 epochs, but ~88 s per epoch on the
    # 2-core machine against ~52 s for "cnn", so 15 epochs take ~22 minutes (docs/training.md).
    "cnn-w192": ArchSpec(
        stages=((32, 1), (48, 2), (192, 2)),
        head_dropout=0.15,
        stage_dropout=0.05,
        batch_norm=True,
        stem_batch_norm=True,
    ),
    # The first production model (registered version 1, 93.35 % test), kept so that run can be reproduced.
    "cnn-v1": ArchSpec(stages=((32, 1), (48, 2), (96, 2)), head_dropout=0.25, stage_dropout=0.05, batch_norm=True),
    "cnn-nobn": ArchSpec(stages=((32, 1), (48, 2), (96, 2)), head_dropout=0.3, stage_dropout=0.1),
    "tiny": ArchSpec(stages=((8, 1), (16, 1)), head_dropout=0.0, stage_dropout=0.0),
}


@cache  # one class per process, so every fused model's layers share it
def _fused_batch_norm_class() -> Any:
    """``BatchNormalization`` whose training pass is TF's fused kernel (inference is the parent's).

    Keras 3 composes training-mode BatchNorm from separate moments/normalise ops; TF's ``FusedBatchNormV3``
    does it in one oneDNN kernel, ~20 % less time per training step for the default model on the 2-core CPU
    (benchmarks/bench_training_step.py). Same variables as the parent, so weights copy 1:1 into a plain model.
    """
    import tensorflow as tf
    from keras import layers

    class FusedBatchNormalization(layers.BatchNormalization):
        def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
            if not training or self.axis not in (-1, len(inputs.shape) - 1) or len(inputs.shape) != 4 or self.renorm:
                return super().call(inputs, training=training, mask=mask)
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                self.gamma if self.scale else tf.ones(inputs.shape[-1:]),
                self.beta if self.center else tf.zeros(inputs.shape[-1:]),
                mean=self.moving_mean,
                variance=self.moving_variance,
                epsilon=self.epsilon,
                is_training=True,
                exponential_avg_factor=1.0 - self.momentum,  # returns the updated moving statistics
            )
            self.moving_mean.assign(mean)
            self.moving_variance.assign(var)
            return y

    return FusedBatchNormalization


def build_model(arch: str = "cnn", seed: int | None = None, *, fused_batch_norm: bool = False) -> Any:
    """A fresh, uncompiled Keras model: (N, 28, 28, 1) float32 in [0, 1] -> (N, 10) softmax.

    ``fused_batch_norm=True`` builds the training variant (TF's fused BatchNorm kernel); hand the trained
    weights to the plain model with :func:`to_plain_model` before saving or serving it.
    """
    import keras
    from keras import layers

    batch_norm = _fused_batch_norm_class() if fused_batch_norm else layers.BatchNormalization

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    for i, (filters, n_convs) in enumerate(spec.stages):
        for j in range(n_convs):
            bn = spec.batch_norm and (i > 0 or spec.stem_batch_norm)
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not bn,  # BatchNorm's shift makes a conv bias redundant
                kernel_initializer="he_normal",
                name=f"conv{i + 1}_{j + 1}",
            )(x)
            if bn:
                x = batch_norm(name=f"bn{i + 1}_{j + 1}")(x)
            x = layers.ReLU(name=f"relu{i + 1}_{j + 1}")(x)
        if i < len(spec.stages) - 1:
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
            if spec.stage_dropout:
                x = layers.Dropout(spec.stage_dropout * (i + 1), name=f"drop{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    if spec.head_dropout:
        x = layers.Dropout(spec.head_dropout, name="head_drop")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"refund_item_classifier_{arch}")


def to_plain_model(model: Any, arch: str) -> Any:
    """The same network built from stock Keras layers, carrying ``model``'s weights (for saving and serving)."""
    plain = build_model(arch)
    plain.set_weights(model.get_weights())
    return plain


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass for one image (conv, depthwise/separable conv, dense); a
    :func:`with_tta` model counts its base model once per view."""
    from keras import layers

    from inference.views import tta_of

    base, views = tta_of(model)
    if base is not model:
        return len(views) * count_macs(base)
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += h * w * (kh * kw * c_in + c_in * c_out)
        elif isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * c_out
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * (c_in // layer.groups) * c_out
        elif isinstance(layer, layers.Dense):
            total += int(layer.input.shape[-1]) * layer.units
    return int(total)


def count_flops(model: Any) -> int:
    """FLOPs per image, counting a multiply-accumulate as 2 FLOPs (BN/ReLU/pooling ignored: < 2 %)."""
    return 2 * count_macs(model)


# --- augmentation (training only; evaluation and serving see the plain preprocessed image) ---------------
# In-graph and stateless: the training input pipeline is pure tf.data (no Python generator whose thread Keras
# waits for at every epoch boundary), and a (seed, step) pair fixes every random draw, so a run is repeatable.

FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot: photographed facing one way, so never mirrored


def random_shift(images: Any, max_shift: int, seed: Any) -> Any:
    """Translate each image of an (N, H, W, C) batch by its own offset in [-max_shift, max_shift], zero-filled."""
    import tensorflow as tf

    if max_shift <= 0:
        return images
    n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    s = max_shift
    padded = tf.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])
    seeds = tf.random.split(seed, 2)
    dy = tf.random.stateless_uniform([n], seeds[0], minval=0, maxval=2 * s + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform([n], seeds[1], minval=0, maxval=2 * s + 1, dtype=tf.int32)
    rows = dy[:, None] + tf.range(h)[None, :]
    cols = dx[:, None] + tf.range(w)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def random_erase(images: Any, prob: float, seed: Any, min_size: int = 4, max_size: int = 10) -> Any:
    """Zero a random rectangle (sides in [min_size, max_size]) in each image with probability ``prob``."""
    import tensorflow as tf

    if prob <= 0:
        return images
    n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    s = tf.random.split(seed, 5)
    chosen = tf.random.stateless_uniform([n], s[0]) < prob
    eh = tf.random.stateless_uniform([n], s[1], minval=min_size, maxval=max_size + 1, dtype=tf.int32)
    ew = tf.random.stateless_uniform([n], s[2], minval=min_size, maxval=max_size + 1, dtype=tf.int32)
    top = tf.cast(tf.random.stateless_uniform([n], s[3]) * tf.cast(h - eh + 1, tf.float32), tf.int32)
    left = tf.cast(tf.random.stateless_uniform([n], s[4]) * tf.cast(w - ew + 1, tf.float32), tf.int32)
    r, c = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])
    in_cols = (c >= left[:, None]) & (c < (left + ew)[:, None])
    erase = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return images * tf.cast(~erase, images.dtype)[..., None]


def augment(
    batch: Any,
    seed: Any,
    *,
    max_shift: int = 2,
    erase_prob: float = 0.0,
    flip: bool = False,
    flippable: Any = None,
) -> Any:
    """Training augmentation of a (N, 28, 28, 1) float batch: shifts, optional h-flips and random erasing.

    ``seed`` is a shape-[2] integer tensor; the same seed gives the same output. With ``flip``, each image is
    mirrored with probability 1/2, restricted to the ``flippable`` ones (a boolean vector) when given.
    """
    import tensorflow as tf

    seeds = tf.random.split(tf.cast(seed, tf.int64), 3)
    out = random_shift(tf.convert_to_tensor(batch), max_shift, seeds[0])
    if flip:
        mirror = tf.random.stateless_uniform([tf.shape(out)[0]], seeds[1]) < 0.5
        if flippable is not None:
            mirror &= tf.cast(flippable, tf.bool)
        out = tf.where(mirror[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return random_erase(out, erase_prob, seeds[2])
