"""Augmentation: image and mask move together, seeds make it repeatable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from medistill.data.augment import AugmentConfig, affine_matrix, augment_pair, random_geometry

SIZE = 40


def asymmetric_mask() -> np.ndarray:
    """An L-shaped label-1 region and a label-2 square: no flip or turn maps it to itself."""
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[6:30, 8:16] = 1
    mask[22:30, 16:26] = 1
    mask[8:16, 26:34] = 2
    return mask


def seed(*values: int) -> tf.Tensor:
    return tf.constant(values, tf.int64)


def run(cfg: AugmentConfig, element_seed: tf.Tensor, image=None, mask=None):
    mask = asymmetric_mask() if mask is None else mask
    image = mask[..., None].astype(np.float32) if image is None else image
    out_image, out_mask = augment_pair(image, mask, element_seed, cfg)
    return out_image.numpy(), out_mask.numpy()


# --- config --------------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = AugmentConfig(rotate90=False, max_rotation_degrees=10, scale_range=(0.8, 1.2), gamma=0.3)
    again = AugmentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.scale_range == (0.8, 1.2)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="flip_lr"):
        AugmentConfig.from_dict({"flip_lr": True})
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.1, 0.9))
    with pytest.raises(ValueError, match="contrast"):
        AugmentConfig(contrast=1.0)
    with pytest.raises(ValueError, match="affine_probability"):
        AugmentConfig(affine_probability=1.5)
    with pytest.raises(ValueError, match="rotate90"):
        AugmentConfig(rotate90="yes")


# --- alignment -----------------------------------------------------------------------


@pytest.mark.parametrize("element_seed", range(8))
def test_flips_and_turns_move_image_and_mask_exactly_together(element_seed):
    cfg = AugmentConfig.geometry_only(max_rotation_degrees=0.0, scale_range=(1.0, 1.0))
    image, mask = run(cfg, seed(element_seed, 3))
    np.testing.assert_array_equal(image[..., 0], mask.astype(np.float32))
    assert mask.sum() == asymmetric_mask().sum()


@pytest.mark.parametrize("element_seed", range(8))
def test_rotation_and_zoom_keep_image_and_mask_aligned(element_seed):
    cfg = AugmentConfig.geometry_only(
        max_rotation_degrees=15.0, scale_range=(0.9, 1.1), affine_probability=1.0
    )
    image, mask = run(cfg, seed(element_seed, 11))
    values = image[..., 0]
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert mask.dtype == np.int32
    # Bilinear and nearest disagree only along edges.
    assert np.mean(np.rint(values) == mask) > 0.93
    assert np.mean(values[mask == 1]) == pytest.approx(1.0, abs=0.1)
    assert np.mean(values[mask == 2]) == pytest.approx(2.0, abs=0.15)
    assert np.mean(values[mask == 0]) < 0.1


def test_several_seeds_give_different_transforms():
    cfg = AugmentConfig.geometry_only(affine_probability=1.0)
    masks = {run(cfg, seed(s, 0))[1].tobytes() for s in range(8)}
    assert len(masks) >= 6


def test_affine_matrix_identity_and_zoom():
    identity = affine_matrix(tf.constant(0.0), tf.constant(1.0), 40, 40).numpy()
    np.testing.assert_allclose(identity, [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)

    # Zooming by 1.5 makes a centred square 1.5 times wider.
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[14:26, 14:26] = 1
    zoom = AugmentConfig.geometry_only(
        flip_horizontal=False,
        flip_vertical=False,
        rotate90=False,
        max_rotation_degrees=0.0,
        scale_range=(1.5, 1.5),
        affine_probability=1.0,
    )
    _, zoomed = run(zoom, seed(0, 0), mask=mask)
    assert zoomed.sum() == pytest.approx(mask.sum() * 1.5**2, rel=0.1)


def test_rotate90_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        random_geometry(tf.zeros((8, 10, 1)), tf.zeros((8, 10), tf.int32), seed(0, 0), AugmentConfig())


# --- intensity -----------------------------------------------------------------------


@pytest.mark.parametrize("element_seed", range(4))
def test_intensity_jitter_changes_the_image_only(element_seed):
    cfg = AugmentConfig.intensity_only(brightness=0.2, contrast=0.2, gamma=0.5)
    rng = np.random.default_rng(element_seed)
    image = rng.random((SIZE, SIZE, 1)).astype(np.float32)
    out_image, out_mask = run(cfg, seed(element_seed, 5), image=image)
    np.testing.assert_array_equal(out_mask, asymmetric_mask())
    assert not np.allclose(out_image, image)
    # Gamma and contrast are monotone: the brightest pixel stays the brightest.
    assert np.argmax(out_image) == np.argmax(image)


def test_intensity_jitter_keeps_a_constant_image_finite():
    cfg = AugmentConfig.intensity_only()
    out_image, _ = run(cfg, seed(1, 2), image=np.zeros((SIZE, SIZE, 1), np.float32))
    assert np.all(np.isfinite(out_image))


def test_zscore_inputs_survive_gamma():
    cfg = AugmentConfig.intensity_only(brightness=0.0, contrast=0.0, gamma=0.5)
    image = np.random.default_rng(0).normal(size=(SIZE, SIZE, 1)).astype(np.float32)
    out_image, _ = run(cfg, seed(3, 4), image=image)
    assert np.all(np.isfinite(out_image))
    assert out_image.min() == pytest.approx(image.min(), abs=1e-4)
    assert out_image.max() == pytest.approx(image.max(), abs=1e-4)


# --- determinism ---------------------------------------------------------------------


def test_same_seed_same_result_different_seed_different_result():
    cfg = AugmentConfig(affine_probability=1.0)
    first = run(cfg, seed(7, 9))
    second = run(cfg, seed(7, 9))
    other = run(cfg, seed(8, 9))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_works_inside_a_dataset_map_with_static_shapes():
    images = np.zeros((3, SIZE, SIZE, 2), np.float32)
    masks = np.zeros((3, SIZE, SIZE), np.int32)
    seeds = np.arange(6, dtype=np.int64).reshape(3, 2)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks, seeds))
    dataset = dataset.map(lambda x, y, s: augment_pair(x, y, s, AugmentConfig()))
    assert dataset.element_spec[0].shape == (SIZE, SIZE, 2)
    assert dataset.element_spec[1].shape == (SIZE, SIZE)
    assert dataset.element_spec[1].dtype == tf.int32
    assert len(list(dataset)) == 3
