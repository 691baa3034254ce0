"""The tf.data pipeline, fed by a synthetic loader (no files)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medistill.data.augment import AugmentConfig
from medistill.data.pipeline import epoch_datasets, make_dataset, make_image_dataset
from medistill.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask

SHAPES = [(37, 91), (91, 37), (40, 40), (20, 30), (33, 47)]
CFG = PreprocessConfig(size=32)


def synthetic_pair(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image whose bright rectangle is the mask; the rectangle moves with index."""
    height, width = SHAPES[index % len(SHAPES)]
    mask = np.zeros((height, width), np.int32)
    top, left = 2 + index % 5, 3 + index % 7
    mask[top : top + height // 3, left : left + width // 3] = 1
    rng = np.random.default_rng(index)
    image = 100.0 * mask[..., None] + rng.normal(10.0, 1.0, (height, width, 1))
    return image.astype(np.float32), mask


def collect(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def training_set(seed: int, **overrides) -> tf.data.Dataset:
    options = dict(
        num_classes=2,
        batch_size=4,
        shuffle=True,
        augment=AugmentConfig(affine_probability=1.0),
        seed=seed,
        load_fn=synthetic_pair,
    )
    options.update(overrides)
    return make_dataset(list(range(10)), CFG, **options)


def test_batch_shapes_and_dtypes():
    dataset = training_set(0)
    x_spec, y_spec = dataset.element_spec
    assert x_spec.shape.as_list() == [None, 32, 32, 1] and x_spec.dtype == tf.float32
    assert y_spec.shape.as_list() == [None, 32, 32] and y_spec.dtype == tf.int32
    batches = collect(dataset)
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    assert all(y.shape == (x.shape[0], 32, 32) for x, y in batches)


def test_drop_remainder_and_rgb_channels():
    dataset = make_dataset(
        list(range(10)),
        PreprocessConfig(size=32, channels=3),
        num_classes=2,
        batch_size=4,
        shuffle=False,
        augment=None,
        seed=0,
        drop_remainder=True,
        load_fn=synthetic_pair,
    )
    assert dataset.element_spec[0].shape.as_list() == [4, 32, 32, 3]
    assert [x.shape for x, _ in collect(dataset)] == [(4, 32, 32, 3)] * 2


def test_without_shuffle_or_augment_batches_equal_preprocessing():
    dataset = training_set(0, shuffle=False, augment=None, batch_size=3)
    xs = np.concatenate([x for x, _ in collect(dataset)])
    ys = np.concatenate([y for _, y in collect(dataset)])
    for index in range(10):
        image, mask = synthetic_pair(index)
        x, geometry = preprocess_image(image, CFG)
        np.testing.assert_array_equal(xs[index], x)
        np.testing.assert_array_equal(ys[index], preprocess_mask(mask, geometry, CFG.size))


def test_same_seed_same_batches_across_builds_and_epochs():
    first, second = training_set(5), training_set(5)
    for _ in range(2):  # two epochs each
        for (x1, y1), (x2, y2) in zip(collect(first), collect(second), strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)


def test_several_passes_make_one_longer_epoch_of_whole_permutations():
    """A small set repeats within an epoch (``passes``); one pass is the plain epoch."""
    def epoch(passes: int, index: int = 0) -> list[np.ndarray]:
        batches = epoch_datasets(list(range(10)), CFG, num_classes=2, batch_size=5, shuffle=True, augment=None,
                                 seed=3, load_fn=synthetic_pair, passes=passes)(index)
        return [y for _, y in collect(batches)]

    def which(mask: np.ndarray) -> int:  # the sample a preprocessed mask came from
        return next(i for i in range(10)
                    if np.array_equal(mask, preprocess_mask(synthetic_pair(i)[1],
                                                            preprocess_image(synthetic_pair(i)[0], CFG)[1], 32)))

    single, triple = epoch(1), epoch(3)
    assert len(single) == 2 and len(triple) == 6
    for a, b in zip(single, triple[:2]):  # the first pass is the one-pass epoch
        np.testing.assert_array_equal(a, b)
    order = [which(m) for batch in triple for m in batch]
    for k in range(3):
        assert sorted(order[10 * k:10 * (k + 1)]) == list(range(10))  # each pass sees every sample once
    assert order[:10] != order[10:20]


def test_different_seed_different_batches():
    a, b = collect(training_set(1)), collect(training_set(2))
    assert not np.array_equal(a[0][0], b[0][0])


def test_each_epoch_is_shuffled_and_augmented_anew():
    dataset = training_set(3, augment=None)
    epoch1, epoch2 = collect(dataset), collect(dataset)
    assert not np.array_equal(epoch1[0][1], epoch2[0][1])
    # Same examples, new order: the sets of masks agree.
    masks1 = sorted(y.tobytes() for _, ys in epoch1 for y in ys)
    masks2 = sorted(y.tobytes() for _, ys in epoch2 for y in ys)
    assert masks1 == masks2

    augmented = training_set(3, shuffle=False)
    assert not np.array_equal(collect(augmented)[0][0], collect(augmented)[0][0])


def test_augmented_batches_keep_image_and_mask_aligned():
    geometry_only = AugmentConfig.geometry_only(affine_probability=1.0)
    for seed in range(3):
        for x, y in collect(training_set(seed, augment=geometry_only)):
            inside = x[..., 0][y == 1]
            outside = x[..., 0][y == 0]
            assert inside.mean() > 0.8
            assert outside.mean() < 0.2


def test_intensity_jitter_leaves_masks_untouched():
    plain = collect(training_set(4, shuffle=False, augment=None))
    jittered = collect(training_set(4, shuffle=False, augment=AugmentConfig.intensity_only()))
    for (x1, y1), (x2, y2) in zip(plain, jittered, strict=True):
        np.testing.assert_array_equal(y1, y2)
        assert not np.array_equal(x1, x2)


def test_labels_outside_num_classes_fail_with_the_sample_name():
    dataset = training_set(0, num_classes=1, load_fn=lambda i: (np.ones((8, 8, 1), np.float32), np.full((8, 8), 2, np.int32)))
    with pytest.raises(tf.errors.OpError, match="num_classes=1"):
        collect(dataset)


def test_missing_mask_fails_clearly():
    dataset = training_set(0, load_fn=lambda i: (np.ones((8, 8, 1), np.float32), None))
    with pytest.raises(tf.errors.OpError, match="has no mask"):
        collect(dataset)


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="no samples"):
        make_dataset([], CFG, num_classes=2, batch_size=2, shuffle=False, augment=None, seed=0, load_fn=synthetic_pair)
    with pytest.raises(ValueError, match="batch_size"):
        training_set(0, batch_size=0)
    with pytest.raises(ValueError, match="num_classes"):
        training_set(0, num_classes=0)


def test_image_dataset_keeps_geometries_in_sample_order():
    samples = list(range(7))
    dataset, geometries = make_image_dataset(samples, CFG, 3, load_fn=synthetic_pair)
    assert dataset.element_spec.shape.as_list() == [None, 32, 32, 1]
    xs = np.concatenate([x.numpy() for x in dataset])
    assert xs.shape == (7, 32, 32, 1)
    for index in samples:
        image, _ = synthetic_pair(index)
        x, geometry = preprocess_image(image, CFG)
        assert geometries[index] == geometry
        np.testing.assert_array_equal(xs[index], x)


def test_image_dataset_needs_no_masks():
    dataset, geometries = make_image_dataset([0, 1], CFG, 2, load_fn=lambda i: (synthetic_pair(i)[0], None))
    assert next(iter(dataset)).shape == (2, 32, 32, 1)
    assert all(g is not None for g in geometries)
