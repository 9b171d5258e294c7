"""Fast unit tests of the training core: augmentation, metrics, cost model, overfitting one batch."""

from __future__ import annotations

import numpy as np
import pytest

from model_training import evaluation as ev
from model_training.network import Augmentation, augment, random_erase, random_shift
from tests.support.models import make_tiny_images


def _seed(*values: int):
    import tensorflow as tf

    return tf.constant(values, tf.int64)


def test_random_shift_moves_content_within_bounds_and_is_seeded() -> None:
    img = np.zeros((1, 28, 28, 1), dtype=np.float32)
    img[0, 10:14, 12:16] = 0.8  # a 4x4 square well away from the border
    batch = np.repeat(img, 50, axis=0)
    outs = [np.asarray(random_shift(batch, 2, _seed(7, 0))) for _ in range(2)]
    np.testing.assert_array_equal(outs[0], outs[1])  # same seed, same result
    assert not np.array_equal(outs[0], np.asarray(random_shift(batch, 2, _seed(7, 1))))
    out = outs[0][..., 0]
    assert out.shape == (50, 28, 28)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), img.sum(), rtol=1e-6)  # nothing lost: pure translation
    rows = np.array([np.flatnonzero(o.any(axis=1))[0] for o in out])
    cols = np.array([np.flatnonzero(o.any(axis=0))[0] for o in out])
    assert set(rows - 10) <= set(range(-2, 3)) and set(cols - 12) <= set(range(-2, 3))
    assert len(set(zip(rows, cols, strict=True))) > 5  # offsets actually vary per image


def test_random_shift_zero_is_identity() -> None:
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(random_shift(x, 0, _seed(0, 0)), x)
    assert random_shift(x, 2, _seed(0, 0)).shape == x.shape


def test_random_erase_zeroes_a_rectangle_only_with_probability() -> None:
    x = np.ones((64, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(random_erase(x, 0.0, _seed(0, 0)), x)
    out = np.asarray(random_erase(x, 1.0, _seed(0, 0), min_size=4, max_size=6))
    zeros = (out == 0).sum(axis=(1, 2, 3))
    assert np.all(zeros >= 16) and np.all(zeros <= 36)
    assert set(np.unique(out)) == {0.0, 1.0}
    half = np.asarray(random_erase(x, 0.5, _seed(1, 0)))
    assert 16 < (half == 0).any(axis=(1, 2, 3)).sum() < 48  # about half the images lose a rectangle


def test_augment_without_flip_keeps_left_right_orientation() -> None:
    x = np.zeros((8, 28, 28, 1), dtype=np.float32)
    x[:, 10:18, 3:6] = 1.0  # a bar on the left
    out = np.asarray(augment(x, _seed(1, 0), Augmentation(max_shift=2)))
    np.testing.assert_allclose(out[:, :, :14].sum(axis=(1, 2, 3)), x[:, :, :14].sum(axis=(1, 2, 3)))


def test_classification_metrics_match_hand_computation() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = ev.classification_metrics(y_true, y_pred, num_classes=3)
    assert m.accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(m.precision, [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(m.recall, [1 / 2, 1.0, 1 / 2])
    np.testing.assert_allclose(m.f1, [0.5, 0.8, 2 / 3])
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_metrics_for_a_class_never_predicted_are_zero_not_nan() -> None:
    m = ev.classification_metrics(np.array([0, 1]), np.array([0, 0]), num_classes=10)
    assert np.all(np.isfinite(m.f1)) and m.f1[1] == 0.0 and m.precision[2] == 0.0
    names = m.as_metrics("test_")
    assert names["test_accuracy"] == 0.5 and "test_f1_T-shirt_top" in names and len(names) == 2 + 3 * 10


def test_report_and_plots_render() -> None:
    rng = np.random.default_rng(0)
    images, labels = make_tiny_images(40)
    probs = rng.dirichlet(np.ones(10), size=40).astype(np.float32)
    m = ev.classification_metrics(labels, probs.argmax(axis=1))
    report = ev.classification_report(m)
    assert "Ankle boot" in report and "macro avg" in report and f"{m.accuracy:.4f}" in report
    for png in (
        ev.plot_confusion_matrix(m.confusion),
        ev.plot_learning_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8]}),
        ev.plot_misclassified(images, labels, probs),
    ):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_cost_model_counts_conv_and_dense_macs() -> None:
    import keras

    from model_training.network import DEFAULT_ARCH, build_model, count_flops, count_macs

    m = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, padding="same"), keras.layers.Flatten(),
                          keras.layers.Dense(10)])  # fmt: skip
    assert count_macs(m) == 28 * 28 * 9 * 1 * 4 + 28 * 28 * 4 * 10
    default = build_model(DEFAULT_ARCH)
    assert 2_000_000 < count_flops(default) < 40_000_000  # inference budget for the 2-core API
    assert default.output_shape == (None, 10)


def test_tta_model_is_the_mean_over_shifted_views_and_survives_save_and_load(tmp_path) -> None:
    import keras

    from inference.tta import TTA_VIEWS, shift_images, tta_of, with_tta
    from model_training.network import build_model, count_flops

    dot = np.zeros((1, 28, 28, 1), dtype=np.float32)
    dot[0, 0, 27, 0] = 1.0  # top-right corner
    assert shift_images(dot, 1, -1)[0, 1, 26, 0] == 1.0 and shift_images(dot, 1, -1).sum() == 1.0  # down-left
    assert shift_images(dot, -1, 0).sum() == 0.0 and shift_images(dot, 0, 1).sum() == 0.0  # pushed out

    base = build_model("tiny", seed=0)
    assert with_tta(base, "none") is base and tta_of(base) == (base, ((0, 0),))
    tta = with_tta(base, "shift5")
    x = np.random.default_rng(1).random((6, 28, 28, 1), dtype=np.float32)
    views = TTA_VIEWS["shift5"]
    assert len(set(views)) == 5 and (0, 0) in views
    want = np.mean([base.predict(shift_images(x, dy, dx), verbose=0) for dy, dx in views], axis=0)
    got = tta.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, base.predict(x, verbose=0), atol=1e-4)  # the views do change the answer
    assert tta.count_params() == base.count_params()  # one network, shared
    assert count_flops(tta) == 5 * count_flops(base)

    tta.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # stock layers only: no custom objects needed
    np.testing.assert_allclose(loaded.predict(x, verbose=0), got, atol=1e-6)
    assert tta_of(loaded)[0].count_params() == base.count_params()
    assert sorted(tta_of(loaded)[1]) == sorted(views)  # the offsets read back from the layers
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        with_tta(base, "flip")


def test_tiny_model_overfits_one_batch() -> None:
    import keras

    from data_processing.preprocessing import to_model_batch
    from model_training.network import build_model

    images, labels = make_tiny_images(32, seed=3)
    x, y = to_model_batch(images), labels
    model = build_model("tiny", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    first = float(model.evaluate(x, y, verbose=0))
    model.fit(x, y, batch_size=32, epochs=150, verbose=0)
    last = float(model.evaluate(x, y, verbose=0))
    assert first > 1.0
    assert last < 0.05, f"one batch not memorised: loss {first:.3f} -> {last:.3f}"


def test_limit_split_takes_a_seeded_subset() -> None:
    from data_processing.dataset import Split
    from model_training.data import limit_split

    images, labels = make_tiny_images(50)
    split = Split(images, labels, np.array([str(i) for i in range(50)]))
    a, b = limit_split(split, 20, seed=1), limit_split(split, 20, seed=1)
    assert len(a) == 20 and np.array_equal(a.keys, b.keys)
    assert len(set(a.keys)) == 20 and set(a.keys) <= set(split.keys)
    assert limit_split(split, None, 1) is split and limit_split(split, 500, 1) is split


def _distinct_images(n: int) -> np.ndarray:
    """Images carrying their index + 1 in a 2x2 square away from the border (kept by shifts of <= 1 pixel)."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 5:7, 5:7] = np.arange(1, n + 1)[:, None, None]
    return images


def test_training_batches_cover_every_image_once_per_epoch_reshuffled_and_reaugmented() -> None:
    from model_training.config import TrainConfig
    from model_training.data import make_batches

    n, labels = 70, np.arange(70) % 10
    cfg = TrainConfig(batch_size=32, seed=5, max_shift=1, photo_aug=0.0)  # photo effects would rewrite the index pixels
    batches = make_batches(_distinct_images(n), labels, cfg, epochs=3)
    assert batches.steps_per_epoch == 3 and batches.epochs == 3
    got = list(batches.dataset.as_numpy_iterator())
    assert [len(y) for _, y in got] == [32, 32, 6] * 3  # the last batch of an epoch is short, never dropped
    x0, y0 = got[0]
    assert x0.shape == (32, 28, 28, 1) and y0.shape == (32, 10) and x0.min() >= 0.0 and x0.max() <= 1.0
    epochs = []
    for e in range(3):
        x = np.concatenate([b[0] for b in got[3 * e : 3 * e + 3]])
        y = np.concatenate([b[1] for b in got[3 * e : 3 * e + 3]])
        ids = np.rint(x.max(axis=(1, 2, 3)) * 255).astype(int) - 1  # the image's index survives any shift
        assert sorted(ids) == list(range(n))  # every image exactly once per epoch
        np.testing.assert_array_equal(y.argmax(axis=1), labels[ids])  # labels travel with their images
        epochs.append((ids, x))
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # a new order every epoch

    def corner_by_id(ids: np.ndarray, x: np.ndarray) -> dict[int, tuple[int, int]]:
        return {int(i): tuple(np.argwhere(img[..., 0] > 0).min(axis=0)) for i, img in zip(ids, x, strict=True)}

    first, second = corner_by_id(*epochs[0]), corner_by_id(*epochs[1])
    assert set(first.values()) <= {(r, c) for r in (4, 5, 6) for c in (4, 5, 6)}  # shifted by at most 1 px
    assert sum(first[i] != second[i] for i in range(n)) > n // 2  # fresh augmentation every epoch
    again = list(make_batches(_distinct_images(n), labels, cfg, epochs=3).dataset.as_numpy_iterator())
    for (xa, ya), (xb, yb) in zip(got, again, strict=True):  # the seed fixes order and augmentation
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_seed = make_batches(_distinct_images(n), labels, TrainConfig(batch_size=32, seed=6, photo_aug=0.0))
    other = next(other_seed.dataset.as_numpy_iterator())
    assert not np.array_equal(other[0], x0)


def test_distillation_batches_carry_each_image_index_with_its_label() -> None:
    from model_training.config import TrainConfig
    from model_training.data import make_batches

    n, labels = 70, (np.arange(70) * 3) % 10
    cfg = TrainConfig(batch_size=32, seed=5, photo_aug=0.0, distill=0.5)
    got = list(make_batches(_distinct_images(n), labels, cfg, epochs=2).dataset.as_numpy_iterator())
    for x, y in got:
        assert y.shape[1] == 11
        ids = np.rint(x.max(axis=(1, 2, 3)) * 255).astype(int) - 1
        np.testing.assert_array_equal(y[:, 10].astype(int), ids)  # the index column names the image in the batch
        np.testing.assert_array_equal(y[:, :10].argmax(axis=1), labels[ids])


def test_self_distillation_blends_past_predictions_into_the_target_and_updates_them() -> None:
    import tensorflow as tf

    from model_training.fit import SelfDistillation

    d = SelfDistillation(4, final_weight=0.5, momentum=0.6, label_smoothing=0.1)
    past = np.array([[0.7, 0.3] + [0.0] * 8, [0.0] * 9 + [1.0]] * 2, dtype=np.float32)
    d.table.assign(past)
    d.start_epoch(5, planned=11)  # halfway: half the final weight
    assert float(d.weight.numpy()) == pytest.approx(0.25) and float(d.keep.numpy()) == pytest.approx(0.6)
    labels = np.eye(10, dtype=np.float32)[[0, 9]]
    y_true = np.concatenate([labels, [[2.0], [1.0]]], axis=1)  # images 2 and 1
    y_pred = np.full((2, 10), 0.1, dtype=np.float32)
    target = d.targets(tf.constant(y_true), tf.constant(y_pred)).numpy()
    smoothed = labels * 0.9 + 0.01
    np.testing.assert_allclose(target, 0.75 * smoothed + 0.25 * past[[2, 1]], atol=1e-6)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-6)
    table = d.table.numpy()
    np.testing.assert_allclose(table[[2, 1]], 0.6 * past[[2, 1]] + 0.4 * y_pred, atol=1e-6)
    np.testing.assert_array_equal(table[[0, 3]], past[[0, 3]])  # images not in the batch keep their average
    # Validation targets (10 columns) get the label-smoothed label and leave the table alone.
    np.testing.assert_allclose(d.targets(tf.constant(labels), tf.constant(y_pred)).numpy(), smoothed, atol=1e-6)
    np.testing.assert_array_equal(d.table.numpy(), table)
    d.start_epoch(0, planned=11)  # the first epoch only fills the table: no weight on it, nothing kept
    assert float(d.weight.numpy()) == 0.0 and float(d.keep.numpy()) == 0.0
    d.start_epoch(10, planned=11)
    assert float(d.weight.numpy()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="distill"):
        SelfDistillation(4, final_weight=1.5, momentum=0.6, label_smoothing=0.1)


def test_self_distilled_fit_fills_every_image_prediction_and_ramps_to_the_final_weight() -> None:
    from model_training.config import TrainConfig
    from model_training.data import make_batches
    from model_training.fit import compile_for_training, distiller_for, make_callbacks
    from model_training.network import build_model

    rng = np.random.default_rng(0)
    n = 300
    images, labels = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)
    cfg = TrainConfig(arch="tiny", epochs=3, batch_size=64, photo_aug=0.0, distill=0.4, time_budget=0, ema_decay=0)
    batches = make_batches(images, labels, cfg)
    model = build_model("tiny", seed=1)
    assert distiller_for(TrainConfig(), n) is None  # off by default: the plain loss, no table
    distiller = distiller_for(cfg, n)
    compile_for_training(model, cfg, batches.steps_per_epoch, distiller)

    from types import SimpleNamespace

    val = SimpleNamespace(images=images[:50], labels=labels[:50])
    callbacks = make_callbacks(cfg, False, val, distiller=distiller)
    hist = model.fit(
        batches.dataset,
        steps_per_epoch=batches.steps_per_epoch,
        epochs=3,
        verbose=0,
        callbacks=callbacks,
        shuffle=False,
    )
    assert 0.0 <= hist.history["accuracy"][-1] <= 1.0  # accuracy reads the label columns, not the index
    table = distiller.table.numpy()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-5)  # every image has a prediction average
    assert float(distiller.weight.numpy()) == pytest.approx(0.4)  # the last epoch uses the final weight


def test_fused_batch_norm_trains_like_keras_and_exports_to_stock_layers() -> None:
    from model_training.network import build_model, to_plain_model

    fused, stock = build_model("cnn", seed=3, fused_batch_norm=True), build_model("cnn", seed=3)
    assert type(fused.get_layer("bn2_1")).__name__ == "FusedBatchNormalization"
    stock.set_weights(fused.get_weights())
    x = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(fused(x, training=True), stock(x, training=True), atol=1e-5)
    # Both moved their moving statistics the same way (Keras: biased variance, TF: unbiased; n=32*7*7 keeps it tiny).
    for a, b in zip(fused.get_weights(), stock.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert not np.allclose(fused.get_layer("bn3_1").moving_mean, 0)  # the training pass did update them
    plain = to_plain_model(fused, "cnn")
    assert {type(layer).__name__ for layer in plain.layers} >= {"BatchNormalization"}
    assert "FusedBatchNormalization" not in {type(layer).__name__ for layer in plain.layers}
    np.testing.assert_array_equal(plain(x, training=False), fused(x, training=False))


def test_garment_flip_mirrors_only_flippable_images() -> None:
    x = np.zeros((200, 28, 28, 1), dtype=np.float32)
    x[:, 10:18, 3:6] = 1.0  # a bar on the left
    flippable = np.arange(200) % 2 == 0
    out = np.asarray(augment(x, _seed(4, 0), Augmentation(max_shift=0, flip=True), flippable=flippable))
    mirrored = out[:, :, 14:].sum(axis=(1, 2, 3)) > 0
    assert not mirrored[~flippable].any()  # footwear keeps its orientation
    assert 30 < mirrored[flippable].sum() < 70  # about half of the others are mirrored
    np.testing.assert_array_equal(out[mirrored], x[mirrored][:, :, ::-1])


def test_photo_aug_upper_gives_photo_effects_to_the_upper_body_garments_only() -> None:
    from model_training.config import TrainConfig
    from model_training.data import make_batches
    from model_training.network import UPPER_BODY

    images = np.zeros((200, 28, 28), dtype=np.uint8)
    images[:, 6:22, 9:19] = np.linspace(60, 255, 10).astype(np.uint8)  # an off-centre item the reframing moves
    labels = np.arange(200) % 10

    def batches(**kw: float) -> list[tuple[np.ndarray, np.ndarray]]:
        cfg = TrainConfig(batch_size=50, seed=3, max_shift=0, photo_aug=0.0, **kw)
        return list(make_batches(images, labels, cfg, epochs=1).dataset.as_numpy_iterator())

    plain, upper = batches(), batches(photo_aug_upper=1.0)
    changed = {True: 0, False: 0}
    for (xp, yp), (xu, yu) in zip(plain, upper, strict=True):
        np.testing.assert_array_equal(yp, yu)  # the same order: only the photo effects differ
        is_upper = np.isin(yp.argmax(axis=1), UPPER_BODY)
        differs = np.abs(xp - xu).max(axis=(1, 2, 3)) > 1e-3
        assert not differs[~is_upper].any()  # photo_aug=0 for the other classes: untouched
        changed[True] += int(differs[is_upper].sum())
        changed[False] += int(is_upper.sum())
    assert changed[True] == changed[False] == 80  # every upper-body garment at photo_aug_upper=1


def test_make_batches_never_flips_footwear() -> None:
    from model_training.config import TrainConfig
    from model_training.data import make_batches
    from model_training.network import FOOTWEAR

    images = np.zeros((256, 28, 28), dtype=np.uint8)
    images[:, 10:18, 3:6] = 255
    labels = np.arange(256) % 10
    batches = make_batches(
        images, labels, TrainConfig(batch_size=64, seed=1, flip="garments", max_shift=0, photo_aug=0.0), epochs=2
    )
    seen = {True: 0, False: 0}
    for x, y in batches.dataset.as_numpy_iterator():
        mirrored = x[:, :, 14:].sum(axis=(1, 2, 3)) > 0
        footwear = np.isin(y.argmax(axis=1), FOOTWEAR)
        assert not (mirrored & footwear).any()
        seen[True] += int(mirrored.sum())
        seen[False] += int((~mirrored & ~footwear).sum())
    assert seen[True] > 80 and seen[False] > 80
    with pytest.raises(ValueError, match="flip"):
        make_batches(images, labels, TrainConfig(flip="sideways"))


def test_temperature_lives_in_the_head_and_survives_the_plain_copy() -> None:
    from model_training.network import build_model, temperature_of, to_plain_model

    x = np.random.default_rng(2).random((5, 28, 28, 1), dtype=np.float32)
    base = build_model("tiny", seed=1)
    warm = to_plain_model(base, "tiny", temperature=2.5)
    assert temperature_of(base) == 1.0 and temperature_of(warm) == pytest.approx(2.5)
    logits = np.log(np.asarray(base.predict(x, verbose=0), dtype=np.float64))
    want = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(warm.predict(x, verbose=0), want, atol=1e-5)  # softmax(logits / T)
    assert np.argmax(want, axis=1).tolist() == np.argmax(logits, axis=1).tolist()  # same answers, softer
    assert {type(layer).__name__ for layer in warm.layers} >= {"Rescaling", "Softmax", "Dense"}
    with pytest.raises(ValueError, match="temperature"):
        build_model("tiny", temperature=0.0)


def test_bfloat16_training_model_computes_in_bfloat16_and_exports_float32_weights() -> None:
    from model_training.network import build_model, to_plain_model

    mixed = build_model("cnn", seed=4, fused_batch_norm=True, mixed_precision=True)
    assert mixed.get_layer("conv2_1").compute_dtype == "bfloat16"
    assert mixed.get_layer("conv2_1").kernel.dtype == "float32"  # weights stay float32
    assert mixed.get_layer("probs").compute_dtype == "float32"
    x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    mixed(x, training=True)  # moves the BatchNorm statistics through the fused kernel in bfloat16
    plain = to_plain_model(mixed, "cnn")
    assert {layer.compute_dtype for layer in plain.layers if hasattr(layer, "compute_dtype")} == {"float32"}
    got, want = plain.predict(x, verbose=0), mixed.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05  # bfloat16 keeps ~3 significant digits
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.9


def test_photo_augment_is_seeded_reframes_and_leaves_unchosen_images_alone() -> None:
    from model_training.network import photo_augment

    x = np.zeros((64, 28, 28, 1), dtype=np.float32)
    x[:, 8:20, 10:18] = 0.6  # a small item that does not fill the frame
    a = np.asarray(photo_augment(x, _seed(3, 1), 0.5))
    np.testing.assert_array_equal(a, np.asarray(photo_augment(x, _seed(3, 1), 0.5)))
    changed = np.abs(a - x).max(axis=(1, 2, 3)) > 1e-6
    assert 16 < changed.sum() < 48  # about half
    np.testing.assert_array_equal(a[~changed], x[~changed])
    out = a[changed][..., 0]
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1.0, atol=1e-5)  # stretched like the preprocessing does
    rows = (out > 0.05).any(axis=2).sum(axis=1)  # framed: the item's longest side now spans (nearly) the frame
    assert np.median(rows) >= 25 and rows.min() >= 20
    np.testing.assert_array_equal(photo_augment(x, _seed(3, 1), 0.0), x)


def test_texture_patterns_light_parts_and_backdrop_leaves_dark_parts_and_other_draws_alone() -> None:
    from model_training.network import PhotoEffects, _texture, photo_augment

    x = np.zeros((64, 28, 28, 1), dtype=np.float32)
    x[:, 6:22, 8:14] = 1.0  # a dark half and a light half of an item on an empty backdrop
    x[:, 6:22, 14:20] = 0.3
    t = np.asarray(_texture(x, _seed(5, 2), 1.0))
    np.testing.assert_array_equal(t, np.asarray(_texture(x, _seed(5, 2), 1.0)))
    assert t.min() >= 0.0 and t.max() <= 1.0
    np.testing.assert_array_equal(t[:, 6:22, 8:14], 1.0)  # fully dark: no light reaches the camera to pattern
    light_spread = t[:, 6:22, 14:20].std(axis=(1, 2, 3))
    assert np.median(light_spread) > 0.01  # a pattern, not a uniform shift
    assert (t[:, :5] > 0).mean() > 0.1  # specks on the backdrop where its pattern is darker
    np.testing.assert_array_equal(_texture(x, _seed(5, 2), 0.0), x)
    # Off, the photo effects are exactly what they were without the option; on, only textured images differ.
    plain = np.asarray(photo_augment(x, _seed(3, 1), 0.5))
    np.testing.assert_array_equal(np.asarray(photo_augment(x, _seed(3, 1), 0.5, PhotoEffects(texture_prob=0.0))), plain)
    textured = np.asarray(photo_augment(x, _seed(3, 1), 0.5, PhotoEffects(texture_prob=0.5)))
    photo = np.abs(plain - x).max(axis=(1, 2, 3)) > 1e-6
    np.testing.assert_array_equal(textured[~photo], x[~photo])
    differs = np.abs(textured - plain).max(axis=(1, 2, 3)) > 1e-6
    assert differs.any() and not differs[~photo].any()


def test_calibration_metrics_match_hand_computation() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    # Bins of width 0.5: {0.6}, {0.7}, {0.8}, {0.9} with 15 bins each lands alone; accuracy 1, 0, 1, 1.
    assert ev.expected_calibration_error(probs, y, n_bins=15) == pytest.approx(
        (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    )
    assert ev.confident_error_share(probs, y, 0.7) == pytest.approx(1 / 4)  # the 0.8 mistake
    assert ev.confident_error_share(probs, y, 0.85) == 0.0


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 10))
    true_t = 2.0
    p_true = np.exp(logits / true_t) / np.exp(logits / true_t).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(10, p=row) for row in p_true])
    overconfident = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # the model's T=1 answers
    t = ev.fit_temperature(overconfident, y)
    assert t == pytest.approx(true_t, rel=0.1)
    calibrated = ev.with_temperature(overconfident, t)
    assert ev.expected_calibration_error(calibrated, y) < ev.expected_calibration_error(overconfident, y) / 2
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))


def test_ema_momentum_ramps_up_to_the_decay() -> None:
    from model_training.callbacks import ema_momentum

    assert ema_momentum(0.999, 0) == pytest.approx(0.1)
    assert ema_momentum(0.999, 90) == pytest.approx(0.91)
    assert ema_momentum(0.999, 10**6) == 0.999


def test_set_overrides_cast_to_the_field_type_and_refuse_unknown_keys() -> None:
    from model_training.config import TrainConfig, with_overrides

    cfg = with_overrides(TrainConfig(), ["erase_prob=0.3", "max_shift=2", "flip=garments", "photo-aug=0.5"])
    assert (cfg.erase_prob, cfg.max_shift, cfg.flip, cfg.photo_aug) == (0.3, 2, "garments", 0.5)
    assert with_overrides(TrainConfig(), ["unfamiliar_score=combined"]).unfamiliar_score == "combined"
    for bad in ("nonsense=1", "epochs", "max_shift=two", "register=false", "unfamiliar_score=mahalanobis"):
        with pytest.raises(ValueError, match="--set"):
            with_overrides(TrainConfig(), [bad])


def test_residual_architecture_adds_its_shortcuts_and_fits_the_budget() -> None:
    from model_training.network import build_model, count_flops, to_plain_model

    res = build_model("res", seed=0)
    adds = [layer for layer in res.layers if type(layer).__name__ == "Add"]
    assert len(adds) == 2 and count_flops(res) <= 40_000_000  # the served-model budget
    tiny = build_model("tiny-res", seed=0, fused_batch_norm=True)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    tiny(x, training=True)
    plain = to_plain_model(tiny, "tiny-res")
    np.testing.assert_array_equal(plain.predict(x, verbose=0), tiny.predict(x, verbose=0))
    # The shortcut matters: zeroing the block's last conv leaves the block's input (through the Add) intact.
    block_out = plain.get_layer("add2_3").output
    probe = __import__("keras").Model(plain.input, [block_out, plain.get_layer("relu2_1").output])
    plain.get_layer("conv2_3").set_weights([np.zeros_like(w) for w in plain.get_layer("conv2_3").get_weights()])
    after_add, block_in = probe.predict(x, verbose=0)
    bn = plain.get_layer("bn2_3")
    gamma, beta, mean, var = bn.get_weights()
    zero_conv = gamma * (0.0 - mean) / np.sqrt(var + bn.epsilon) + beta  # what BatchNorm makes of a zero conv
    np.testing.assert_allclose(after_add, block_in + zero_conv, atol=1e-5)


def test_a_hidden_head_layer_sits_between_the_features_and_the_logits_and_survives_the_plain_copy() -> None:
    from model_training.network import ARCHITECTURES, build_model, count_flops, to_plain_model

    spec = ARCHITECTURES["cnn-fc192"]
    model = build_model("cnn-fc192", seed=0, fused_batch_norm=True, mixed_precision=True)
    hidden = model.get_layer("hidden")
    assert hidden.units == spec.head_units and hidden.input.shape[-1] == 7 * 7 * 128
    assert model.get_layer("logits").input.shape[-1] == spec.head_units
    assert count_flops(model) <= 40_000_000  # the served-model budget
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    plain = to_plain_model(model, "cnn-fc192")
    np.testing.assert_array_equal(plain.get_layer("hidden").get_weights()[0], hidden.get_weights()[0])
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)  # bfloat16
    assert "hidden" not in {layer.name for layer in build_model("cnn").layers}


def test_plan_epochs_fits_the_budget_within_bounds() -> None:
    from model_training.callbacks import plan_epochs

    # 2 epochs done at 100 s, 30 s per epoch, 60 s kept: (900 - 60 - 100) // 30 = 24 more.
    assert plan_epochs(40, 2, 100.0, 30.0, 900.0, 60.0) == 26
    assert plan_epochs(20, 2, 100.0, 30.0, 900.0, 60.0) == 20  # the cap wins on a fast machine
    assert plan_epochs(40, 2, 1000.0, 30.0, 900.0, 60.0) == 2  # already over: stop after what is done
    assert plan_epochs(40, 2, 100.0, 30.0, 0.0, 60.0) == 40  # no budget


def test_the_plan_grows_when_more_fits_early_enough_and_is_cut_whenever_it_no_longer_fits() -> None:
    from model_training.callbacks import plan_epochs, replan

    first = plan_epochs(40, 2, 100.0, 30.0, 900.0, 180.0)  # photo renders still pending: 180 s kept
    assert first == 22
    # At epoch 8 (280 s in) the renders are done and only 30 s are kept: the plan grows to what fits with half an
    # epoch to spare, (900 - 30 - 15 - 280) // 30 = 19 more.
    assert replan(first, 40, 8, 280.0, 30.0, 900.0, 30.0) == 8 + 19
    assert replan(first, 40, 8, 280.0, 25.0, 900.0, 180.0) == 8 + (900 - 180 - 12.5 - 280) // 25  # a faster pace
    assert replan(first, 40, 14, 460.0, 30.0, 900.0, 30.0) == first  # past 60 % of the plan: too late to grow
    assert replan(40, 40, 8, 280.0, 15.0, 900.0, 30.0) == 40  # already at the cap
    # Cut whenever the plan no longer fits, however far along: 10 done at 300 s, 40 s per epoch now.
    assert replan(30, 44, 10, 300.0, 40.0, 900.0, 30.0) == 10 + (900 - 30 - 300) // 40
    assert replan(30, 44, 25, 800.0, 40.0, 900.0, 30.0) == 26
    assert replan(30, 44, 10, 950.0, 40.0, 900.0, 30.0) == 10  # already over: stop after what is done
    assert replan(30, 44, 10, 300.0, 40.0, 0.0, 30.0) == 30  # no budget


class _FakeModel:
    """What the time budget touches of a Keras model: the optimizer's schedule and ``stop_training``."""

    def __init__(self, schedule: object) -> None:
        self.optimizer = type("Optimizer", (), {"_learning_rate": schedule})()
        self.stop_training = False


def _drive_time_budget(epoch_seconds: list[float], budget: float, cap: int, steps: int = 10) -> tuple[int, float, int]:
    """Run the time-budget callback over epochs taking ``epoch_seconds`` on a fake clock; returns the epochs
    trained, the seconds they took, and the schedule's last step."""
    from model_training.callbacks import BudgetClock, EpochPlan, TimeBudget
    from model_training.fit import warmup_cosine

    now = [0.0]
    budget_cb = TimeBudget(EpochPlan(cap, steps, cap), BudgetClock(budget, 0.0, lambda: 5.0, lambda: now[0]))
    schedule = warmup_cosine(0.004, steps, cap * steps)
    model = _FakeModel(schedule)
    budget_cb.set_model(model)
    trained = 0
    for epoch, seconds in enumerate(epoch_seconds):
        budget_cb.on_epoch_begin(epoch)
        now[0] += seconds
        budget_cb.on_epoch_end(epoch)
        trained = epoch + 1
        if model.stop_training:
            break
    return trained, now[0], int(schedule.total_steps.numpy())


def test_a_host_that_slows_down_does_not_overrun_the_time_budget() -> None:
    # Epoch 1 compiles (10 s), epoch 2 takes 8 s: 100 s less 5 s kept fit 2 + (95 - 18) // 8 = 11 -> the cap, 10.
    # Then every epoch takes 12 s: planned at epoch 2's pace the run would end at 18 + 8 x 12 = 114 s.
    trained, seconds, last_step = _drive_time_budget([10.0, 8.0] + [12.0] * 20, budget=100.0, cap=10)
    assert seconds + 5.0 <= 100.0 and trained == 8  # 18 + 6 x 12 = 90 s + 5 kept; a 9th epoch would overrun
    assert last_step == trained * 10  # the cosine decay re-planned to end where the run ends
    # A steady host keeps the first plan.
    assert _drive_time_budget([10.0, 8.0] + [8.0] * 20, budget=100.0, cap=10)[0] == 10
    # A fresh clone: the photo renders slow the first epochs to 12 s (planned at that pace after epoch 2:
    # 2 + (195 - 22) // 12 = 16), then epochs take 8 s; the plan grows at the new pace (to 21: half an epoch kept
    # spare) and the run ends within the budget, using all but 1.5 epochs of it.
    trained, seconds, last_step = _drive_time_budget([10.0] + [12.0] * 4 + [8.0] * 40, budget=200.0, cap=30)
    assert trained == 21 and 200.0 - 12.0 < seconds + 5.0 <= 200.0 and last_step == trained * 10
    # One 30 s hiccup: its 22 s are gone (two epochs' worth), but the pace is still 8 s, so exactly those two
    # go (a mean of the last three epochs, 15 s, would cut to 6).
    assert _drive_time_budget([10.0, 8.0, 8.0, 30.0] + [8.0] * 20, budget=100.0, cap=10)[:2] == (8, 88.0)


def _drive_steps(
    step_seconds: list[list[float]], plan: object, budget: float, tail: float = 0.0
) -> tuple[list[int], float]:
    """Run the time budget step by step on a fake clock: epoch ``e`` takes ``step_seconds[e]`` per step, then
    ``tail`` seconds of validation. Returns the steps trained in each epoch and the seconds the fit took."""
    from model_training.callbacks import BudgetClock, TimeBudget

    now = [0.0]
    budget_cb = TimeBudget(plan, BudgetClock(budget, 0.0, lambda: 5.0, lambda: now[0]))
    model = _FakeModel(None)
    budget_cb.set_model(model)
    trained: list[int] = []
    for epoch, steps in enumerate(step_seconds):
        budget_cb.on_epoch_begin(epoch)
        done = 0
        for batch, seconds in enumerate(steps):
            now[0] += seconds
            done += 1
            budget_cb.on_train_batch_end(batch)
            if model.stop_training:
                break
        now[0] += tail
        budget_cb.on_epoch_end(epoch)
        trained.append(done)
        if model.stop_training:
            break
    return trained, now[0]


def test_the_first_epoch_is_planned_at_its_steady_pace_not_its_tracing_steps() -> None:
    from model_training.callbacks import EpochPlan

    # 10 steps an epoch; the first three trace (5 s each), then 1 s a step and 2 s of validation: 12 s an epoch.
    # Planned for 10 epochs in 100 s (5 s kept), the first epoch (29 s) leaves (95 - 29) // 12 = 5 more.
    first = [5.0, 5.0, 5.0] + [1.0] * 7
    plan = EpochPlan(10, 10, 10)
    trained, seconds = _drive_steps([first] + [[1.0] * 10] * 12, plan, budget=100.0, tail=2.0)
    assert plan.epochs == 6 and trained == [10] * 6 and seconds + 5.0 <= 100.0
    # Judged by the whole first epoch (29 s), only (95 - 29) // 29 = 2 more would have been planned.


def test_a_step_that_cannot_finish_within_the_budget_is_not_started() -> None:
    from model_training.callbacks import EpochPlan

    # One epoch planned of 100 steps at 1 s, but the host slows to 3 s a step: 100 s less 5 s kept and the
    # 2 s of validation leave room for 31 steps (93 s) within the epoch, and the run stops there.
    plan = EpochPlan(1, 100, 1, tail_seconds=2.0)
    trained, seconds = _drive_steps([[3.0] * 100], plan, budget=100.0, tail=2.0)
    assert trained == [31] and seconds + 5.0 <= 100.0
    # A plan that ends within its only epoch (not even one epoch fits) stops at its last step.
    trained, _ = _drive_steps([[1.0] * 100], EpochPlan(1, 100, 1, last_epoch_steps=40), budget=0.0)
    assert trained == [40]


def test_warmup_cosine_matches_keras_and_can_be_replanned() -> None:
    import keras

    from model_training.fit import warmup_cosine

    ours = warmup_cosine(0.004, 10, 100)
    ref = keras.optimizers.schedules.CosineDecay(0.004 / 20, 90, alpha=0.0, warmup_target=0.004, warmup_steps=10)
    for step in (0, 5, 10, 37, 99, 100, 150):
        assert float(ours(step)) == pytest.approx(float(ref(step)), rel=1e-5, abs=1e-9), step
    ours.total_steps.assign(50)  # re-planned: the decay now ends at step 50
    assert float(ours(50)) == pytest.approx(0.0, abs=1e-9) and float(ours(30)) > 0.0
    assert float(ours(10)) == pytest.approx(0.004)


def test_threshold_for_error_share_keeps_unreviewed_mistakes_within_the_share() -> None:
    # Confidences 0.95 .. 0.50 in steps of 0.05; the 2nd and 5th most confident answers are wrong.
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    probs = np.stack([conf, 1 - conf], axis=1)
    y = np.zeros(10, dtype=int)
    y[[1, 4]] = 1
    t = ev.threshold_for_error_share(probs, y, 0.1)  # one unreviewed mistake in ten allowed
    assert t == pytest.approx(0.8)  # keeps 0.95 .. 0.8 (one mistake); 0.75 would let the second one through
    assert ev.confident_error_share(probs, y, t) <= 0.1 < ev.confident_error_share(probs, y, 0.75)
    assert ev.threshold_for_error_share(probs, y, 0.2) == 0.0  # both mistakes allowed: nothing to review
    assert ev.threshold_for_error_share(probs, y, 0.0) == pytest.approx(0.95)  # only the first answer is safe
    tied = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    assert ev.threshold_for_error_share(tied, np.array([1, 0, 0]), 0.0) == 1.0  # a tie cannot split a mistake off


def test_the_share_aimed_at_on_validation_leaves_one_standard_error_of_margin() -> None:
    assert ev.share_with_margin(0.02, 1000) == pytest.approx(0.02 - np.sqrt(0.02 * 0.98 / 1000))  # 1.56 %
    assert ev.share_with_margin(0.02, 1000, z=0.0) == 0.02
    assert ev.share_with_margin(0.02, 100_000) > ev.share_with_margin(0.02, 1000)  # more photos, less margin
    assert ev.share_with_margin(0.02, 3) == 0.0  # never below zero
    from model_training.report import REVIEW_MARGIN_Z

    # Training aims one-sided 95 % below the target: 1.27 % on the 1,000 validation photos (one standard error: 1.56 %).
    assert ev.share_with_margin(0.02, 1000, REVIEW_MARGIN_Z) == pytest.approx(0.0127, abs=5e-5)
