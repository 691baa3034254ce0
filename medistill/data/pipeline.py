"""tf.data pipelines: samples → preprocessed, cached, shuffled, augmented batches.

Order: sample indices → load + preprocess in parallel (``tf.numpy_function``, order
kept) → ``cache`` → seeded shuffle (new order each epoch) → augmentation (one stateless
seed per element, new each epoch) → batch → prefetch. Under a fixed ``seed`` two builds
of the same data set yield identical batches, epoch after epoch.

Example::

    train = make_dataset(samples, PreprocessConfig(size=128), num_classes=2,
                         batch_size=8, shuffle=True, augment=AugmentConfig(), seed=0)
    for x, y in train:   # x (8, 128, 128, 1) float32, y (8, 128, 128) int32
        ...
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from medistill.data.augment import AugmentConfig, augment_pair
from medistill.data.preprocess import Geometry, PreprocessConfig, preprocess_image, preprocess_mask

LoadFn = Callable[[Any], tuple[np.ndarray, np.ndarray | None]]


def _sample_name(sample: Any) -> str:
    describe = getattr(sample, "describe", None)
    return describe() if callable(describe) else str(sample)


def _default_load_fn(mask_mode: str) -> LoadFn:
    # Imported here so this module does not depend on the readers at import time.
    from medistill.data.samples import load_sample

    def load(sample: Any) -> tuple[np.ndarray, np.ndarray | None]:
        return load_sample(sample, mask_mode=mask_mode)

    return load


def _default_image_load_fn() -> LoadFn:
    from medistill.data.samples import load_sample_image

    return lambda sample: (load_sample_image(sample), None)


def _check_labels(mask: np.ndarray, num_classes: int, sample: Any) -> None:
    # num_classes=1 is a binary model: labels {0, 1}.
    limit = max(num_classes, 2)
    if mask.size and (mask.min() < 0 or mask.max() >= limit):
        found = np.unique(mask).tolist()
        raise ValueError(
            f"sample {_sample_name(sample)}: mask labels {found} do not fit num_classes={num_classes} "
            f"(allowed 0..{limit - 1}); check the mask files or num_classes"
        )


def _resolve_seed(seed: int | None) -> int:
    return random.SystemRandom().randrange(2**31) if seed is None else int(seed)


def _check_common(samples: Sequence[Any], batch_size: int) -> None:
    if len(samples) == 0:
        raise ValueError("no samples to build a data set from")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def make_dataset(
    samples: Sequence[Any],
    cfg: PreprocessConfig,
    *,
    num_classes: int,
    batch_size: int,
    shuffle: bool,
    augment: AugmentConfig | None,
    seed: int | None,
    cache: bool = True,
    drop_remainder: bool = False,
    load_fn: LoadFn | None = None,
    mask_mode: str = "auto",
) -> tf.data.Dataset:
    """Batches ``(x (B, S, S, C) float32, y (B, S, S) int32)`` for training or evaluation.

    Args:
        samples: what ``load_fn`` reads (by default :class:`medistill.data.Sample`).
        cfg: preprocessing applied to every image.
        num_classes: the model's classes (1 = binary); masks with other labels fail.
        batch_size: examples per batch.
        shuffle: reshuffle the order every epoch (seeded).
        augment: augmentation config, or ``None`` for none.
        seed: makes shuffling and augmentation repeatable; ``None`` draws one.
        cache: keep preprocessed examples in memory after the first epoch.
        drop_remainder: drop a last, smaller batch.
        load_fn: ``load_fn(sample) -> (image, mask)``; defaults to
            ``medistill.data.load_sample(sample, mask_mode=mask_mode)``.
        mask_mode: passed to the default loader.
    """
    samples = list(samples)
    _check_common(samples, batch_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    load = load_fn if load_fn is not None else _default_load_fn(mask_mode)
    seed = _resolve_seed(seed)

    def load_and_preprocess(index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        sample = samples[int(index)]
        image, mask = load(sample)
        if mask is None:
            raise ValueError(f"sample {_sample_name(sample)} has no mask; training and evaluation need one")
        x, geometry = preprocess_image(image, cfg)
        y = preprocess_mask(mask, geometry, cfg.size)
        _check_labels(y, num_classes, sample)
        return x, y

    def load_element(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(load_and_preprocess, [index], (tf.float32, tf.int32), name="load_sample")
        x.set_shape((cfg.size, cfg.size, cfg.channels))
        y.set_shape((cfg.size, cfg.size))
        return x, y

    dataset = tf.data.Dataset.range(len(samples))
    dataset = dataset.map(load_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        dataset = _augmented(dataset, augment, seed)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def epoch_datasets(
    samples: Sequence[Any],
    cfg: PreprocessConfig,
    *,
    num_classes: int,
    batch_size: int,
    shuffle: bool,
    augment: AugmentConfig | None,
    seed: int,
    drop_remainder: bool = True,
    load_fn: LoadFn | None = None,
    mask_mode: str = "auto",
    passes: int = 1,
) -> Callable[[int], tf.data.Dataset]:
    """``epoch -> that epoch's batches``, with order and augmentation drawn from ``(seed, epoch)`` only.

    The batches are those of :func:`make_dataset`, but epoch ``k`` is the same in every
    process: a run resumed at epoch ``k`` sees exactly the data an uninterrupted run
    would (``make_dataset`` reshuffles per pass, so a new process starts again with
    the first epoch's order). Preprocessed examples are kept in memory after their
    first use, as ``make_dataset``'s cache does. ``passes`` > 1 makes an epoch of several
    passes over a small set, each in its own order (see :func:`medistill.train.loop.epoch_length`).

    Example::

        train = epoch_datasets(samples, cfg, num_classes=2, batch_size=8, shuffle=True,
                               augment=AugmentConfig(), seed=0)
        loop.fit(train)            # the loop calls train(epoch) for every epoch
    """
    samples = list(samples)
    _check_common(samples, batch_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    load = load_fn if load_fn is not None else _default_load_fn(mask_mode)
    seed = int(seed)
    memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load_and_preprocess(index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        key = int(index)
        if key not in memo:
            sample = samples[key]
            image, mask = load(sample)
            if mask is None:
                raise ValueError(f"sample {_sample_name(sample)} has no mask; training and evaluation need one")
            x, geometry = preprocess_image(image, cfg)
            y = preprocess_mask(mask, geometry, cfg.size)
            _check_labels(y, num_classes, sample)
            memo[key] = (x, y)
        return memo[key]

    def load_element(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(load_and_preprocess, [index], (tf.float32, tf.int32), name="load_sample")
        x.set_shape((cfg.size, cfg.size, cfg.channels))
        y.set_shape((cfg.size, cfg.size))
        return x, y

    def for_epoch(epoch: int) -> tf.data.Dataset:
        rng = np.random.default_rng([seed, int(epoch)])
        orders = [rng.permutation(len(samples)) if shuffle else np.arange(len(samples))
                  for _ in range(max(1, int(passes)))]
        dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(orders).astype(np.int64))
        dataset = dataset.map(load_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment is not None:
            dataset = _augmented(dataset, augment, int(rng.integers(2**31 - 1)), rerandomize=False)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return for_epoch


def _augmented(dataset: tf.data.Dataset, augment: AugmentConfig, seed: int,
               rerandomize: bool = True) -> tf.data.Dataset:
    # One (2,) stateless seed per element, from a seeded stream that is redrawn every
    # epoch (rerandomize_each_iteration) but identical across builds with the same seed.
    element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize).batch(2)
    paired = tf.data.Dataset.zip(dataset, element_seeds)
    return paired.map(
        lambda pair, element_seed: augment_pair(pair[0], pair[1], element_seed, augment),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def make_image_dataset(
    samples: Sequence[Any],
    cfg: PreprocessConfig,
    batch_size: int,
    *,
    load_fn: LoadFn | None = None,
) -> tuple[tf.data.Dataset, list[Geometry | None]]:
    """Batches of preprocessed images ``x (B, S, S, C)`` for prediction (masks unused).

    ``load_fn(sample) -> (image, anything)`` defaults to reading the image only.

    Returns the data set and a list with one :class:`Geometry` per sample, in the
    order of ``samples``. The list is filled as images are preprocessed: every entry of
    a batch is set by the time that batch is yielded, and all are set after one pass.

    Example::

        dataset, geometries = make_image_dataset(samples, cfg, batch_size=4)
        probs = np.concatenate([predict(x) for x in dataset])
        outputs = [restore(p, g) for p, g in zip(probs, geometries)]
    """
    samples = list(samples)
    _check_common(samples, batch_size)
    load = load_fn if load_fn is not None else _default_image_load_fn()
    geometries: list[Geometry | None] = [None] * len(samples)

    def load_and_preprocess(index: np.int64) -> np.ndarray:
        position = int(index)
        image, _ = load(samples[position])
        x, geometry = preprocess_image(image, cfg)
        geometries[position] = geometry
        return x

    def load_element(index: tf.Tensor) -> tf.Tensor:
        x = tf.numpy_function(load_and_preprocess, [index], tf.float32, name="load_image")
        x.set_shape((cfg.size, cfg.size, cfg.channels))
        return x

    dataset = tf.data.Dataset.range(len(samples))
    dataset = dataset.map(load_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), geometries
