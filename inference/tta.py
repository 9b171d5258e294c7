"""Test-time views: the served model may average the softmax of an image and of copies shifted by one pixel.

Training augments with the same 1-pixel shifts. Mirrored views are not used: shoes face one way. A multi-view model
is one Keras model built from stock layers only (zero padding + cropping shift a view, the views share the
network's weights, ``Average`` joins them), so it saves, loads, exports and serves like any Keras model;
:func:`tta_of` reads the views back from a loaded model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT_SHAPE = (28, 28, 1)

TTA_VIEWS: dict[str, tuple[tuple[int, int], ...]] = {
    "none": ((0, 0),),
    "shift5": ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)),  # (down, right) offsets in pixels
}


def with_tta(model: Any, tta: str) -> Any:
    """The model to serve: ``model`` itself for ``"none"``, else one Keras model averaging its softmax over the
    :data:`TTA_VIEWS` of each image. Built from stock layers only (zero padding + cropping shift a view; the
    views share ``model``'s weights), so it saves, loads and serves like any Keras model."""
    import keras
    from keras import layers

    if tta not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {sorted(TTA_VIEWS)}")
    views = TTA_VIEWS[tta]
    if len(views) == 1:
        return model
    inputs = keras.Input(INPUT_SHAPE, name="image")
    outputs = []
    for dy, dx in views:
        x = inputs
        if (dy, dx) != (0, 0):
            tag = f"{'d' if dy > 0 else 'u' if dy < 0 else ''}{'r' if dx > 0 else 'l' if dx < 0 else ''}"
            pad = ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
            x = layers.ZeroPadding2D(pad, name=f"tta_pad_{tag}")(x)
            x = layers.Cropping2D((pad[0][::-1], pad[1][::-1]), name=f"tta_crop_{tag}")(x)
        outputs.append(model(x))
    return keras.Model(inputs, layers.Average(name="tta_mean")(outputs), name=f"{model.name}_{tta}")


def shift_images(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W, C) images moved down by ``dy`` and right by ``dx`` pixels, zeros coming in: one test-time view
    in numpy (benchmarks and tests; the served model does it with Keras layers)."""
    if (dy, dx) == (0, 0):
        return x
    h, w = x.shape[1:3]
    out = np.zeros_like(x)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def tta_of(model: Any) -> tuple[Any, tuple[tuple[int, int], ...]]:
    """``(network, views)`` of a model built by :func:`with_tta`, each view a (down, right) pixel offset; for any
    other model ``(model, ((0, 0),))``. Read from the layers, so a loaded model answers too."""
    import keras
    from keras import layers

    names = [layer.name for layer in model.layers]
    if "tta_mean" not in names:
        return model, ((0, 0),)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))  # the nested network
    shifts = []
    for layer in model.layers:
        if isinstance(layer, layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            shifts.append((top - bottom, left - right))
    unshifted = len(model.get_layer("tta_mean").input) - len(shifts)
    return base, ((0, 0),) * unshifted + tuple(shifts)
