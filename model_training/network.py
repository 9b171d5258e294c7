"""The classifier's architecture, its cost model and the training-time augmentation.

Pure functions and a Keras model factory; no I/O. The default architecture (``DEFAULT_ARCH``, ``"cnn-fc192"``)
is a VGG-style stack with BatchNorm, chosen by measurement on the 2-core target machine (see docs/training.md): a
single cheap convolution at full 28x28 resolution, then two 3x3 convolutions at 14x14 and two at 7x7, dropout, a
hidden layer of 192 units and a dense softmax head (``"cnn"`` is the same without the hidden layer). ``"tiny"``
exists for tests and quick smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from common.labels import NUM_CLASSES

if TYPE_CHECKING:
    import keras
    from tensorflow import Tensor

INPUT_SHAPE = (28, 28, 1)
# What a default training run builds (TrainConfig.arch); "cnn" is the same network without the hidden layer.
DEFAULT_ARCH = "cnn-fc192"


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
    # Residual stages (after the first): the first conv changes the width, each further pair of convs is a
    # residual block (conv-BN-ReLU-conv-BN, + input, ReLU), all stock layers (Add).
    residual: bool = False
    # > 0: a hidden ReLU layer of this many units between the flattened features and the logits (dropout
    # ``head_dropout`` on both sides); matrix products are the cheapest capacity in training time on this CPU.
    head_units: int = 0


# 128 filters at 7x7 (v1 had 96): +30 % MACs but only ~+8 % step time on the 2-core CPU, more capacity; lighter
# head dropout than v1, which under-fitted in its short schedule (train acc ~ val acc). Versions 2-3 and the default
# to the ninth round; the research variants below are this network with one thing changed.
_CNN = ArchSpec(stages=((32, 1), (48, 2), (128, 2)), head_dropout=0.15, stage_dropout=0.05, batch_norm=True)

ARCHITECTURES: dict[str, ArchSpec] = {
    "cnn": _CNN,
    # 192 filters at 7x7 + stem BatchNorm (55 MFLOPs): 93.89 % test in 15 epochs, but ~88 s per epoch on the
    # 2-core machine against ~52 s for "cnn", so 15 epochs take ~22 minutes (docs/training.md).
    "cnn-w192": ArchSpec(
        stages=((32, 1), (48, 2), (192, 2)),
        head_dropout=0.15,
        stage_dropout=0.05,
        batch_norm=True,
        stem_batch_norm=True,
    ),
    # 144 filters at 7x7 (38.5 MFLOPs, within the 40 served): the cheapest capacity in training time, yet 22-26 s
    # per epoch against ~20, 34 epochs in the budget: validation 0.9504, a tie (research log, ninth round).
    "cnn-w144": replace(_CNN, stages=((32, 1), (48, 2), (144, 2))),
    # Two convolutions at 28x28 (20 filters each; 37.4 MFLOPs): finer detail before the first pooling, at the default's
    # training pace: validation 0.9506, a tie (research log, ninth round).
    "cnn-s20": replace(_CNN, stages=((20, 2), (48, 2), (128, 2))),
    # The default since the tenth round: "cnn" plus 192 hidden units before the logits (36.3 MFLOPs, 1.45 M parameters;
    # validation 0.9522 / 0.9524 against 0.9496 / 0.9522 for "cnn", seeds 42 / 43, research log).
    "cnn-fc192": replace(_CNN, head_units=192),
    # Twice the hidden units (38.7 MFLOPs): "cnn-fc192" still under-fits (98.2 % on its own clean training split,
    # validation 95.4 %); eleventh round of the research log.
    "cnn-fc384": replace(_CNN, head_units=384),
    # The first production model (registered version 1, 93.35 % test), kept so that run can be reproduced.
    "cnn-v1": ArchSpec(stages=((32, 1), (48, 2), (96, 2)), head_dropout=0.25, stage_dropout=0.05, batch_norm=True),
    "cnn-nobn": ArchSpec(stages=((32, 1), (48, 2), (96, 2)), head_dropout=0.3, stage_dropout=0.1),
    # Research for AVX2-only CPUs (issue 25, docs/research/2026-12-07-avx2-networks.md): cheaper to train per epoch,
    # not the default. 15.6 MFLOPs, 0.60 M parameters, 0.52x the default's CPU time per training image on AVX2:
    # 10 float32 epochs 92.45 % test / 89.40 % photos, against the default's 5 short-recipe epochs 91.90 / 89.15.
    "lite-a": replace(_CNN, stages=((24, 1), (32, 2), (80, 2)), head_units=128),
    # 11.9 MFLOPs (0.42x) and 19.9 MFLOPs (0.79x) per training image on AVX2; step time only, not trained.
    "lite-b": replace(_CNN, stages=((16, 1), (32, 2), (64, 2)), head_units=128),
    "lite-c": replace(_CNN, stages=((32, 1), (48, 2), (96, 1)), head_units=192),
    "tiny": ArchSpec(stages=((8, 1), (16, 1)), head_dropout=0.0, stage_dropout=0.0),
    # A small residual network within the 40-MFLOP budget (36.0 MFLOPs): 7 convs instead of 5, narrower.
    "res": ArchSpec(
        stages=((32, 1), (40, 3), (96, 3)), head_dropout=0.15, stage_dropout=0.05, batch_norm=True, residual=True
    ),
    "tiny-res": ArchSpec(stages=((8, 1), (8, 3)), head_dropout=0.0, stage_dropout=0.0, batch_norm=True, residual=True),
}


@cache  # one class per process, so every fused model's layers share it
def _fused_batch_norm_class() -> type[keras.layers.BatchNormalization]:
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


def build_model(
    arch: str = DEFAULT_ARCH,
    seed: int | None = None,
    *,
    fused_batch_norm: bool = False,
    mixed_precision: bool = False,
    temperature: float = 1.0,
) -> keras.Model:
    """A fresh, uncompiled Keras model: (N, 28, 28, 1) float32 in [0, 1] -> (N, 10) softmax.

    The head is ``Dense`` logits -> ``Rescaling(1 / temperature)`` -> ``Softmax`` (all stock layers), so a
    calibration temperature lives inside the model and every runtime that executes it gets calibrated
    probabilities; ``temperature=1`` is the plain softmax. ``fused_batch_norm=True`` builds the training variant
    (TF's fused BatchNorm kernel) and ``mixed_precision=True`` computes in bfloat16 with float32 weights (Keras'
    ``mixed_bfloat16`` policy; the softmax stays float32); hand the trained weights to the plain float32 model
    with :func:`to_plain_model` before saving or serving it.
    """
    import keras
    from keras import layers

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    fused = _fused_batch_norm_class() if fused_batch_norm else layers.BatchNormalization
    policy = "mixed_bfloat16" if mixed_precision else "float32"

    def batch_norm(**kw: Any) -> keras.layers.Layer:
        return fused(dtype=policy, **kw)

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    for i, (filters, n_convs) in enumerate(spec.stages):
        shortcut = None
        for j in range(n_convs):
            bn = spec.batch_norm and (i > 0 or spec.stem_batch_norm)
            block = spec.residual and i > 0 and j > 0  # convs 2-3, 4-5, ... of a residual stage form blocks
            if block and j % 2 == 1:
                shortcut = x
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not bn,  # BatchNorm's shift makes a conv bias redundant
                kernel_initializer="he_normal",
                name=f"conv{i + 1}_{j + 1}",
                dtype=policy,
            )(x)
            if bn:
                x = batch_norm(name=f"bn{i + 1}_{j + 1}")(x)
            if block and j % 2 == 0 and shortcut is not None:
                x = layers.Add(name=f"add{i + 1}_{j + 1}", dtype=policy)([x, shortcut])
            x = layers.ReLU(name=f"relu{i + 1}_{j + 1}", dtype=policy)(x)
        if i < len(spec.stages) - 1:
            x = layers.MaxPooling2D(name=f"pool{i + 1}", dtype=policy)(x)
            if spec.stage_dropout:
                x = layers.Dropout(spec.stage_dropout * (i + 1), name=f"drop{i + 1}", dtype=policy)(x)
    x = layers.Flatten(name="flatten", dtype=policy)(x)
    if spec.head_dropout:
        x = layers.Dropout(spec.head_dropout, name="head_drop", dtype=policy)(x)
    if spec.head_units:
        x = layers.Dense(spec.head_units, activation="relu", name="hidden", dtype=policy)(x)
        if spec.head_dropout:
            x = layers.Dropout(spec.head_dropout, name="hidden_drop", dtype=policy)(x)
    return keras.Model(inputs, _head(x, temperature, policy), name=f"refund_item_classifier_{arch}")


def _head(x: keras.KerasTensor, temperature: float, policy: str) -> keras.KerasTensor:
    """Logits -> divided by the calibration temperature -> softmax; the last two in float32."""
    from keras import layers

    logits = layers.Dense(NUM_CLASSES, name="logits", dtype=policy)(x)
    scaled = layers.Rescaling(1.0 / temperature, name="temperature", dtype="float32")(logits)
    return layers.Softmax(name="probs", dtype="float32")(scaled)


def temperature_of(model: keras.Model) -> float:
    """The calibration temperature baked into ``model`` (1.0 for a model without a temperature layer)."""
    from inference.tta import tta_of

    base = tta_of(model)[0]
    names = {layer.name for layer in base.layers}
    if "temperature" not in names:
        return 1.0
    return float(1.0 / base.get_layer("temperature").scale)


def to_plain_model(model: keras.Model, arch: str, temperature: float = 1.0) -> keras.Model:
    """The same network built from stock float32 Keras layers, carrying ``model``'s weights (for saving and
    serving), with the calibration ``temperature`` in its head."""
    plain = build_model(arch, temperature=temperature)
    plain.set_weights(model.get_weights())
    return plain


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass for one image (conv, depthwise/separable conv, dense); a
    :func:`with_tta` model counts its base model once per view."""
    from keras import layers

    from inference.tta import tta_of

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


def count_flops(model: keras.Model) -> int:
    """FLOPs per image, counting a multiply-accumulate as 2 FLOPs (BN/ReLU/pooling ignored: < 2 %)."""
    return 2 * count_macs(model)


# --- augmentation (training only; evaluation and serving see the plain preprocessed image) ---------------
# In-graph and stateless: the training input pipeline is pure tf.data (no Python generator whose thread Keras
# waits for at every epoch boundary), and a (seed, step) pair fixes every random draw, so a run is repeatable.

FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot: photographed facing one way, so never mirrored
UPPER_BODY = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt: told apart by detail a photo blurs


def random_shift(images: Tensor, max_shift: int, seed: Tensor) -> Tensor:
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


def random_erase(images: Tensor, prob: float, seed: Tensor, min_size: int = 4, max_size: int = 10) -> Tensor:
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


@dataclass(frozen=True)
class Augmentation:
    """A run's training augmentation besides the photo effects' share: shifts of up to ``max_shift`` pixels, random
    erasing with probability ``erase_prob``, mirroring each image with probability 1/2 (``flip``), and the share of
    photo-augmented images that get a textured backdrop (``texture_prob``)."""

    max_shift: int = 2
    erase_prob: float = 0.0
    flip: bool = False
    texture_prob: float = 0.0


def augment(
    batch: Tensor,
    seed: Tensor,
    aug: Augmentation = Augmentation(),
    *,
    photo_prob: float | Tensor = 0.0,
    flippable: Tensor | None = None,
) -> Tensor:
    """Training augmentation of a (N, 28, 28, 1) float batch: photo effects (:func:`photo_augment`, on a
    ``photo_prob`` share of the images, ``aug.texture_prob`` of those with a textured backdrop), shifts,
    optional h-flips and random erasing (``aug``). ``photo_prob`` is one number or one per image (a float tensor
    [N]).

    ``seed`` is a shape-[2] integer tensor; the same seed gives the same output. With ``aug.flip``, each image is
    mirrored with probability 1/2, restricted to the ``flippable`` ones (a boolean vector) when given.
    """
    import tensorflow as tf

    seeds = tf.random.split(tf.cast(seed, tf.int64), 4)
    out = tf.convert_to_tensor(batch)
    # A separate stream: the other draws stay what they were without photo augmentation (off at photo_prob 0).
    out = photo_augment(out, seeds[3], photo_prob, PhotoEffects(texture_prob=aug.texture_prob))
    out = random_shift(out, aug.max_shift, seeds[0])
    if aug.flip:
        mirror = tf.random.stateless_uniform([tf.shape(out)[0]], seeds[1]) < 0.5
        if flippable is not None:
            mirror &= tf.cast(flippable, tf.bool)
        out = tf.where(mirror[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return random_erase(out, aug.erase_prob, seeds[2])


# --- photo augmentation: what the photo path does to an item, mimicked on the 28x28 training image --------
# A warehouse photo reaches the model through data_processing.preprocessing: the item is rotated a little, seen in
# mild perspective, sometimes partly cut off, reframed to its bounding box (longest side 28 px, centred), smoothed
# by the camera, JPEG and resampling, and its intensity is stretched so its darkest part is 255 (with a different
# tonal curve than the original product photo's). These in-graph, seeded ops reproduce those effects so the network
# learns them; the photo benchmark (model_training.photo_bench) measures whether that worked.


def _projective(
    images: Tensor, seed: Tensor, max_degrees: float, scale: tuple[float, float], keystone: float
) -> Tensor:
    """Rotate (up to +-``max_degrees``), scale and keystone each image about its centre, bilinear, zero fill."""
    import math

    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    s = tf.random.split(seed, 4)
    theta = tf.random.stateless_uniform([n], s[0], -max_degrees, max_degrees) * (math.pi / 180)
    zoom = tf.random.stateless_uniform([n], s[1], scale[0], scale[1])
    persp = tf.random.stateless_uniform([n, 2], s[2], -keystone, keystone)
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # Output (x, y) -> input: rotate and scale about the centre; the projective terms make one edge shorter.
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    c0, c1 = persp[:, 0] / w, persp[:, 1] / h
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, c0, c1], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([h, w]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _reframe(images: Tensor, seed: Tensor, cut_prob: float) -> Tensor:
    """Crop each image to its item's bounding box made square (longest side -> the full frame, centred), the
    way the preprocessing frames a photo; with probability ``cut_prob`` 5-20 % of the item is cut off one side
    first (an item partly outside the photo)."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    mask = images[..., 0] > 0.05
    rows, cols = tf.reduce_any(mask, axis=2), tf.reduce_any(mask, axis=1)
    has = tf.reduce_any(rows, axis=1)
    top = tf.cast(tf.argmax(tf.cast(rows, tf.int32), axis=1), tf.float32)
    bottom = tf.cast(h - 1 - tf.argmax(tf.cast(tf.reverse(rows, [1]), tf.int32), axis=1), tf.float32)
    left = tf.cast(tf.argmax(tf.cast(cols, tf.int32), axis=1), tf.float32)
    right = tf.cast(w - 1 - tf.argmax(tf.cast(tf.reverse(cols, [1]), tf.int32), axis=1), tf.float32)
    s = tf.random.split(seed, 3)
    cut = tf.random.stateless_uniform([n], s[0]) < cut_prob
    side = tf.random.stateless_uniform([n], s[1], 0, 4, dtype=tf.int32)
    share = tf.random.stateless_uniform([n], s[2], 0.05, 0.2) * tf.cast(cut, tf.float32)
    hh, ww = bottom - top + 1, right - left + 1
    top += tf.where(side == 0, share * hh, 0.0)
    bottom -= tf.where(side == 1, share * hh, 0.0)
    left += tf.where(side == 2, share * ww, 0.0)
    right -= tf.where(side == 3, share * ww, 0.0)
    size = tf.maximum(bottom - top + 1, right - left + 1)
    my, mx = (top + bottom) / 2, (left + right) / 2
    # crop_and_resize addresses pixel centres (0 .. size-1): output pixel i samples the window's (i + 0.5)/28.
    y1 = (my - size / 2 + 0.5 * size / h) / (h - 1)
    y2 = (my - size / 2 + (h - 0.5) * size / h) / (h - 1)
    x1 = (mx - size / 2 + 0.5 * size / w) / (w - 1)
    x2 = (mx - size / 2 + (w - 0.5) * size / w) / (w - 1)
    boxes = tf.stack([y1, x1, y2, x2], axis=1)
    framed = tf.image.crop_and_resize(images, boxes, tf.range(n), [h, w], extrapolation_value=0.0)
    return tf.where(has[:, None, None, None], framed, images)


def _texture(images: Tensor, seed: Tensor, prob: float, max_amp: float = 0.2) -> Tensor:
    """With probability ``prob`` per image, a textured backdrop as the photo path leaves it. The item's
    reflectance is the backdrop's times its own, so a backdrop pattern ``1 + e(x)`` turns darkness ``d`` into
    ``d - e(x) (1 - d)``: specks on the backdrop (the floor removal clips them), the pattern inside a light item,
    little of it on a dark one. ``e`` mixes two gratings (wood grain, weave, grout lines; periods 2.5-10 px) and
    a blotchy field (cardboard), with an amplitude up to ``max_amp``."""
    import math

    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    s = tf.random.split(seed, 7)
    yy, xx = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    angle = tf.random.stateless_uniform([n, 2, 1, 1], s[0], 0.0, math.pi)
    period = tf.random.stateless_uniform([n, 2, 1, 1], s[1], 2.5, 10.0)
    phase = tf.random.stateless_uniform([n, 2, 1, 1], s[2], 0.0, 2 * math.pi)
    gratings = tf.sin(2 * math.pi * (xx * tf.cos(angle) + yy * tf.sin(angle)) / period + phase)  # (n, 2, h, w)
    blotches = tf.image.resize(tf.random.stateless_normal([n, 7, 7, 1], s[3]), [h, w])[..., 0]
    mix = tf.random.stateless_uniform([n, 3, 1, 1], s[4])
    mix /= tf.reduce_sum(mix, axis=1, keepdims=True)
    field = tf.reduce_sum(mix * tf.concat([gratings, blotches[:, None]], axis=1), axis=1)[..., None]
    amp = tf.random.stateless_uniform([n, 1, 1, 1], s[5], 0.0, max_amp)
    chosen = tf.random.stateless_uniform([n], s[6]) < prob
    out = tf.clip_by_value(images - amp * field * (1.0 - images), 0.0, 1.0)
    return tf.where(chosen[:, None, None, None], out, images)


def _tone(images: Tensor, seed: Tensor) -> Tensor:
    """Camera and resampling softness or crispness, another tonal curve, the backdrop's leftover removed, and the
    darkest part stretched back to 1 (the preprocessing's normalisation)."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    s = tf.random.split(seed, 3)
    g = tf.constant([0.25, 0.5, 0.25])
    kernel = tf.reshape(g[:, None] * g[None, :], [3, 3, 1, 1])
    blurred = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
    amount = tf.random.stateless_uniform([n, 1, 1, 1], s[0], -0.5, 1.0)  # < 0 sharpens, > 0 softens
    out = tf.maximum(images + amount * (blurred - images), 0.0)
    gamma = tf.exp(tf.random.stateless_uniform([n, 1, 1, 1], s[1], -0.35, 0.35))
    out = tf.pow(out + 1e-6, gamma)
    floor = tf.random.stateless_uniform([n, 1, 1, 1], s[2], 0.0, 0.06)
    out = tf.maximum(out - floor, 0.0)
    peak = tf.reduce_max(out, axis=[1, 2, 3], keepdims=True)
    return tf.where(peak > 0, out / tf.maximum(peak, 1e-6), out)


@dataclass(frozen=True)
class PhotoEffects:
    """How strong :func:`photo_augment`'s effects are: rotation up to +-``max_degrees``, a zoom within ``scale``, a
    keystone of up to ``keystone``, ``cut_prob`` of the items partly cut off, ``texture_prob`` on a textured
    backdrop."""

    max_degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.05)
    keystone: float = 0.06
    cut_prob: float = 0.1
    texture_prob: float = 0.0


def photo_augment(images: Tensor, seed: Tensor, prob: float | Tensor, effects: PhotoEffects = PhotoEffects()) -> Tensor:
    """With probability ``prob`` per image, what a warehouse photo and the preprocessing do to the item
    (rotation, perspective, cut-off, reframing, a textured backdrop on ``effects.texture_prob`` of them, softness,
    tonal curve, stretch); the rest are returned as they are. ``prob`` is one number or one per image.
    ``seed`` is a shape-[2] integer tensor: the same seed gives the same output."""
    import tensorflow as tf

    if isinstance(prob, int | float) and prob <= 0:
        return images
    images = tf.convert_to_tensor(images)
    s = tf.random.split(tf.cast(seed, tf.int64), 4)
    out = _projective(images, s[0], effects.max_degrees, effects.scale, effects.keystone)
    out = _reframe(out, s[1], effects.cut_prob)
    if effects.texture_prob > 0:  # a stream of its own, so the other draws stay what they were without it
        out = _texture(out, tf.random.experimental.stateless_fold_in(s[1], 7919), effects.texture_prob)
    out = _tone(out, s[2])
    chosen = tf.random.stateless_uniform([tf.shape(images)[0]], s[3]) < prob
    return tf.where(chosen[:, None, None, None], out, images)
