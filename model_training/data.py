"""The training input: the processed splits from the store, a seeded subset, and the in-graph ``tf.data``
pipelines (shuffled, augmented training batches; validation batches), all through THE preprocessing function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from common.labels import NUM_CLASSES
from common.settings import Settings
from common.storage import ObjectNotFound, is_storage_error, storage_from_settings
from common.storage_errors import storage_error_message
from data_processing.dataset import Split, load_split
from data_processing.preprocessing import to_model_batch
from model_training.config import DataMissing, TrainConfig
from model_training.network import FOOTWEAR, UPPER_BODY, Augmentation, augment


def load_splits(settings: Settings) -> tuple[Any, Any, Any]:
    """The processed train, val and test splits; :class:`DataMissing` with one line when they cannot be had (not
    processed yet, or the store cannot be read: the line says what to check)."""
    storage = storage_from_settings(settings)
    splits = []
    for name in ("train", "val", "test"):
        try:
            split = load_split(storage, name)
        except ObjectNotFound as exc:
            raise DataMissing(
                f"processed split {name!r} not found in {settings.storage_uri}; run ric process "
                "(python data_processing/process.py) first"
            ) from exc
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            raise DataMissing(storage_error_message(exc, settings.storage_uri, settings.aws_endpoint_url)) from exc
        if len(split) == 0 or split.images.shape[1:] != (28, 28):
            raise DataMissing(f"processed split {name!r} is empty or malformed: images {split.images.shape}")
        splits.append(split)
    return splits[0], splits[1], splits[2]


def limit_split(split: Any, limit: int | None, seed: int) -> Any:
    """A stratified-enough random subset of ``limit`` items (all of them if ``limit`` is None or larger)."""

    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return Split(images=split.images[idx], labels=split.labels[idx], keys=split.keys[idx])


def one_hot(labels: np.ndarray) -> np.ndarray:
    """(N,) class indices -> (N, 10) float32 one-hot targets (the loss applies label smoothing)."""

    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


@dataclass(frozen=True)
class TrainingBatches:
    """The training input: a ``tf.data`` pipeline of ``epochs * steps_per_epoch`` augmented batches."""

    dataset: Any
    steps_per_epoch: int
    epochs: int


def make_batches(
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, epochs: int | None = None
) -> TrainingBatches:
    """Shuffled, augmented batches for ``epochs`` (default ``cfg.epochs``) epochs; deterministic given the seed.
    Targets are one-hot; with ``cfg.distill`` each row also carries the image's index as an 11th column.

    Every epoch is a fresh permutation of all images (the last batch may be short) with fresh augmentation;
    both are stateless functions of (seed, epoch, step), so the result does not depend on threading or on
    how far an earlier run got. One pipeline for the whole run: Keras keeps its iterator across epochs
    (``steps_per_epoch``), so nothing is torn down at epoch boundaries.
    """

    if cfg.flip not in ("none", "all", "garments"):
        raise ValueError(f"flip must be none, all or garments, not {cfg.flip!r}")
    epochs = cfg.epochs if epochs is None else epochs
    n = len(images)
    x_all = tf.constant(to_model_batch(images))  # THE preprocessing path; augmentation acts on its output
    y_all = tf.constant(one_hot(labels))
    flippable = tf.constant(~np.isin(labels, FOOTWEAR) if cfg.flip == "garments" else np.ones(n, dtype=bool))
    seed = tf.constant(cfg.seed, tf.int64)
    photo_probs = None
    if cfg.photo_aug_upper > 0:
        upper = np.isin(labels, UPPER_BODY)
        photo_probs = tf.constant(np.where(upper, cfg.photo_aug_upper, cfg.photo_aug).astype(np.float32))

    aug = Augmentation(cfg.max_shift, cfg.erase_prob, flip=cfg.flip != "none", texture_prob=cfg.photo_texture)

    def epoch_order(epoch: Any) -> Any:
        keys = tf.random.stateless_uniform([n], tf.stack([seed, epoch]), dtype=tf.float32)
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(cfg.batch_size)

    def make_batch(step: Any, idx: Any) -> tuple[Any, Any]:
        x = augment(
            tf.gather(x_all, idx),
            tf.stack([seed, step + 1_000_003]),  # a stream apart from the shuffling seeds (seed, epoch)
            aug,
            photo_prob=cfg.photo_aug if photo_probs is None else tf.gather(photo_probs, idx),
            flippable=tf.gather(flippable, idx),
        )
        y = tf.gather(y_all, idx)
        if cfg.distill > 0:  # the loss looks up (and updates) each image's past predictions by its index
            y = tf.concat([y, tf.cast(idx, tf.float32)[:, None]], axis=1)
        return x, y

    dataset = tf.data.Dataset.range(epochs).flat_map(epoch_order).enumerate().map(make_batch).prefetch(2)
    return TrainingBatches(
        dataset.with_options(pipeline_options()), steps_per_epoch=int(np.ceil(n / cfg.batch_size)), epochs=epochs
    )


def pipeline_options() -> Any:
    """``tf.data`` options for training and validation input: deterministic, without the autotuning thread.

    Destroying an iterator waits for tf.data's autotuning thread, which only wakes up periodically: fits and
    validations stalled 10-40 s at iterator teardown (probes in docs/training.md). The pipelines are
    fixed-size (one map, prefetch 2), so there is nothing to tune.
    """

    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> Any:
    """Preprocessed, one-hot validation data as a ``tf.data`` pipeline with :func:`pipeline_options`."""

    dataset = tf.data.Dataset.from_tensor_slices((to_model_batch(images), one_hot(labels))).batch(batch_size)
    return dataset.with_options(pipeline_options())
