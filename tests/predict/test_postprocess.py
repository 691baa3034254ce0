"""Post-processing of label maps: largest component and minimum size, per class, 2-D and 3-D."""

from __future__ import annotations

import numpy as np

from medistill.predict.postprocess import clean_labels


def test_each_class_keeps_its_own_largest_component():
    labels = np.zeros((8, 8), np.int32)
    labels[0:3, 0:3] = 1   # 9 px, class 1
    labels[6, 6] = 1       # 1 px, class 1
    labels[4:6, 0:2] = 2   # 4 px, class 2
    labels[0, 7] = 2       # 1 px, class 2
    cleaned = clean_labels(labels, largest_component=True)
    assert (cleaned == 1).sum() == 9 and (cleaned == 2).sum() == 4
    assert cleaned[6, 6] == 0 and cleaned[0, 7] == 0


def test_min_size_counts_voxels_of_a_volume_in_3d():
    labels = np.zeros((3, 5, 5), np.int32)
    labels[:, 1, 1] = 1    # a 3-voxel column: one 3-D component, 1 px per slice
    labels[1, 3, 3] = 1    # a lone voxel
    cleaned = clean_labels(labels, min_size=2)
    assert cleaned[:, 1, 1].all() and cleaned[1, 3, 3] == 0


def test_nothing_asked_nothing_changed():
    labels = np.random.default_rng(0).integers(0, 3, (6, 6))
    assert clean_labels(labels) is labels


def test_the_noise_floor_is_a_fraction_of_each_slice():
    from medistill.predict.postprocess import min_component_pixels, remove_specks

    assert min_component_pixels(0.1, 10, 10) == 10 and min_component_pixels(0.101, 10, 10) == 11
    stack = np.zeros((2, 10, 10), np.int32)
    stack[0, 0:3, 0:3] = 1          # 9 px: below 10
    stack[0, 5:9, 5:9] = 1          # 16 px: kept
    stack[1, 0:2, 0:5] = 2          # 10 px of class 2: kept (>= 10)
    stack[1, 9, 9] = 2              # 1 px of class 2: removed
    cleaned = remove_specks(stack, 0.1)
    assert cleaned[0].sum() == 16 and (cleaned[0, 5:9, 5:9] == 1).all()
    assert (cleaned[1] == 2).sum() == 10 and cleaned[1, 9, 9] == 0
    assert remove_specks(stack, 0.0) is stack
