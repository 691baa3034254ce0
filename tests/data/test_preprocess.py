"""Preprocessing: configs, normalisation values, resize/pad geometry and its inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medistill.data.preprocess import (
    Geometry,
    PreprocessConfig,
    normalise,
    preprocess_image,
    preprocess_mask,
    restore,
    restore_labels,
)

SHAPES = [(37, 91), (91, 37), (45, 45), (20, 30), (64, 64)]


def blob_mask(height: int, width: int) -> np.ndarray:
    """Two rectangles (labels 1 and 2) that are large compared with a pixel."""
    mask = np.zeros((height, width), np.int32)
    mask[height // 5 : height // 2, width // 6 : width // 2] = 1
    mask[height // 2 + 2 : height - 3, width // 2 + 2 : width - 3] = 2
    return mask


# --- configs -----------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = PreprocessConfig(size=128, channels=3, normalisation="zscore", clip_percentiles=(0.5, 99.5))
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.clip_percentiles == (0.5, 99.5)


def test_config_defaults_and_missing_keys():
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    assert PreprocessConfig().to_dict() == {
        "size": 256,
        "channels": 1,
        "normalisation": "minmax",
        "clip_percentiles": None,
    }


def test_config_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="sizee"):
        PreprocessConfig.from_dict({"sizee": 64})


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": 0}, "size"),
        ({"size": 3.5}, "size"),
        ({"channels": 2}, "channels"),
        ({"normalisation": "max"}, "normalisation"),
        ({"clip_percentiles": (99.5, 0.5)}, "low < high"),
        ({"clip_percentiles": (-1, 50)}, "clip_percentiles"),
        ({"clip_percentiles": (1,)}, "two numbers"),
    ],
)
def test_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        PreprocessConfig(**kwargs)


def test_geometry_round_trips_through_json():
    geometry = Geometry.for_size(37, 91, 64)
    assert (geometry.resized_height, geometry.resized_width) == (26, 64)
    assert Geometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry
    with pytest.raises(ValueError, match="extra"):
        Geometry.from_dict({**geometry.to_dict(), "extra": 1})


# --- normalisation -------------------------------------------------------------------


def test_minmax_values_by_hand():
    image = np.array([[[10.0], [20.0]], [[30.0], [50.0]]], np.float32)
    out = normalise(image, PreprocessConfig())
    np.testing.assert_allclose(out.ravel(), [0.0, 0.25, 0.5, 1.0])


def test_zscore_values_by_hand():
    image = np.array([[[1.0], [3.0]]], np.float32)  # mean 2, std 1
    out = normalise(image, PreprocessConfig(normalisation="zscore"))
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0])


def test_percentile_clipping_removes_outliers():
    values = np.arange(101, dtype=np.float32)  # percentile p is exactly value p
    values[-1] = 1e6  # a hot pixel
    image = values.reshape(1, 101, 1)
    cfg = PreprocessConfig(clip_percentiles=(10.0, 90.0))
    low, high = np.percentile(values, [10, 90])
    expected = (np.clip(values, low, high) - low) / (high - low)
    np.testing.assert_allclose(normalise(image, cfg).ravel(), expected, rtol=1e-6)
    out = normalise(image, cfg).ravel()
    assert out[:11].max() == 0.0 and out[-11:].min() == 1.0


@pytest.mark.parametrize("normalisation", ["minmax", "zscore"])
def test_constant_image_becomes_zeros(normalisation):
    image = np.full((20, 30, 1), 7.5, np.float32)
    x, _ = preprocess_image(image, PreprocessConfig(size=32, normalisation=normalisation))
    assert np.all(np.isfinite(x))
    assert np.all(x == 0.0)


def test_rgb_becomes_luma_and_grey_is_replicated():
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100.0, 50.0, 0.0
    rgb[0, 0] = 0.0  # one black pixel gives the minimum
    x, _ = preprocess_image(rgb, PreprocessConfig(size=4, channels=1))
    assert x.shape == (4, 4, 1)
    np.testing.assert_allclose(x[0, 0, 0], 0.0)
    np.testing.assert_allclose(x[1, 1, 0], 1.0)  # all other pixels share one luma

    grey = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    x3, _ = preprocess_image(grey, PreprocessConfig(size=4, channels=3))
    assert x3.shape == (4, 4, 3)
    np.testing.assert_array_equal(x3[..., 0], x3[..., 2])


def test_bad_images_fail_clearly():
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((4, 4, 2), np.float32), PreprocessConfig(size=8))
    bad = np.zeros((4, 4, 1), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess_image(bad, PreprocessConfig(size=8))


# --- geometry ------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", SHAPES)
def test_image_is_resized_and_padded_bottom_right(height, width):
    size = 64
    image = np.random.default_rng(0).random((height, width, 1)).astype(np.float32) + 1.0
    x, geometry = preprocess_image(image, PreprocessConfig(size=size))
    assert x.shape == (size, size, 1) and x.dtype == np.float32
    assert max(geometry.resized_height, geometry.resized_width) == size
    assert geometry.resized_height == round(height * size / max(height, width))
    # Content fills the resized region; everything below and right of it is padding.
    assert np.all(x[geometry.resized_height :, :] == 0.0)
    assert np.all(x[:, geometry.resized_width :] == 0.0)
    assert x[: geometry.resized_height, : geometry.resized_width].min() >= 0.0
    assert x.max() <= 1.0


@pytest.mark.parametrize("height, width", SHAPES)
def test_mask_round_trip_keeps_shape_and_labels(height, width):
    mask = blob_mask(height, width)
    x, geometry = preprocess_image(mask[..., None].astype(np.float32), PreprocessConfig(size=48))
    y = preprocess_mask(mask, geometry, 48)
    assert y.shape == (48, 48) and y.dtype == np.int32
    assert set(np.unique(y)) <= {0, 1, 2}
    assert np.all(y[geometry.resized_height :, :] == 0)

    one_hot = np.eye(3, dtype=np.float32)[y]
    prob = restore(one_hot, geometry)
    assert prob.shape == (height, width, 3)
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    agreement = np.mean(prob.argmax(-1) == mask)
    assert agreement > 0.95

    labels = restore_labels(y, geometry)
    assert labels.shape == (height, width)
    assert np.mean(labels == mask) > 0.95


def test_mask_and_image_stay_aligned():
    mask = blob_mask(37, 91)
    x, geometry = preprocess_image(mask[..., None].astype(np.float32), PreprocessConfig(size=64))
    y = preprocess_mask(mask, geometry)
    image_labels = np.rint(x[..., 0] * 2).astype(np.int32)  # minmax maps label 2 to 1.0
    assert np.mean(image_labels == y) > 0.97


def test_restore_binary_map_and_channel_axis():
    geometry = Geometry.for_size(20, 30, 32)
    prob = np.full((32, 32), 0.25, np.float32)
    assert restore(prob, geometry).shape == (20, 30)
    np.testing.assert_allclose(restore(prob, geometry), 0.25)
    assert restore(prob[..., None], geometry).shape == (20, 30, 1)


def test_restore_many_classes():
    geometry = Geometry.for_size(9, 7, 16)
    prob = np.random.default_rng(1).random((16, 16, 600)).astype(np.float32)
    assert restore(prob, geometry).shape == (9, 7, 600)


def test_mask_of_wrong_shape_fails():
    geometry = Geometry.for_size(20, 30, 32)
    with pytest.raises(ValueError, match="does not match"):
        preprocess_mask(np.zeros((30, 20), np.int32), geometry)
