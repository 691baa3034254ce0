"""Boundary maps from label maps: squares, touching classes, widths, tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from medistill.errors import MedistillError
from medistill.losses.boundaries import boundary_map, label_map


def square(size=8, low=2, high=6, value=1):
    labels = np.zeros((size, size), "int32")
    labels[low:high, low:high] = value
    return labels


def test_square_gives_its_one_pixel_inner_ring():
    labels = square()
    expected = np.zeros((8, 8), "float32")
    expected[2:6, 2:6] = 1
    expected[3:5, 3:5] = 0
    got = boundary_map(labels)
    assert got.dtype == tf.float32 and got.shape == (8, 8)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_width_two_gives_a_two_pixel_ring():
    labels = square(size=10, low=2, high=8)
    expected = np.zeros((10, 10), "float32")
    expected[2:8, 2:8] = 1
    expected[4:6, 4:6] = 0
    np.testing.assert_array_equal(boundary_map(labels, width=2).numpy(), expected)


def test_touching_classes_and_the_image_border():
    labels = np.zeros((4, 6), "int32")
    labels[:, :3] = 1
    labels[:, 3:] = 2  # no background at all; the image border is not a contour
    expected = np.zeros((4, 6), "float32")
    expected[:, 2:4] = 1
    np.testing.assert_array_equal(boundary_map(labels).numpy(), expected)
    assert boundary_map(np.zeros((4, 4), "int32")).numpy().sum() == 0


def test_batched_and_channel_inputs_match_unbatched():
    batch = np.stack([square(), square(low=0, high=3, value=2)])
    one_by_one = np.stack([boundary_map(labels).numpy() for labels in batch])
    np.testing.assert_array_equal(boundary_map(batch).numpy(), one_by_one)
    np.testing.assert_array_equal(boundary_map(batch[..., None]).numpy(), one_by_one)


def test_boundary_map_in_tf_data_with_unknown_batch():
    batch = np.stack([square(), square(low=1, high=4)])
    dataset = tf.data.Dataset.from_tensor_slices(batch).batch(2).map(boundary_map)
    assert dataset.element_spec.shape.as_list() == [None, 8, 8]
    expected = np.stack([boundary_map(labels).numpy() for labels in batch])
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), expected)


def test_bad_label_shapes_and_widths_raise():
    with pytest.raises(MedistillError, match="one-hot"):
        label_map(np.zeros((1, 4, 4, 3), "int32"))
    with pytest.raises(MedistillError, match="width"):
        boundary_map(square(), width=0)
    with pytest.raises(MedistillError, match="labels"):
        boundary_map(np.zeros((4,), "int32"))
