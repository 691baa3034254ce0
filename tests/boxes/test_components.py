"""Masks to boxes on hand-made masks: exact coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from medistill.boxes import Box, class_names_for, mask_to_boxes
from medistill.errors import DataError, MedistillError


def two_blobs() -> np.ndarray:
    mask = np.zeros((10, 12), np.int32)
    mask[2:6, 3:8] = 1
    mask[7:9, 9:12] = 1
    return mask


def test_two_blobs_give_two_boxes_with_exact_coordinates():
    boxes = mask_to_boxes(two_blobs())
    assert [b.xyxy for b in boxes] == [[3, 2, 8, 6], [9, 7, 12, 9]]
    assert all(b.class_id == 0 and b.score == 1.0 for b in boxes)
    # pixel-edge coordinates: a box's size is its pixel count along each axis
    assert (boxes[0].width, boxes[0].height) == (5, 4)


def test_empty_mask_gives_no_box():
    assert mask_to_boxes(np.zeros((8, 8), np.int32)) == []


def test_diagonal_pixels_are_one_component_with_8_connectivity():
    mask = np.zeros((6, 6), np.int32)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1
    assert [b.xyxy for b in mask_to_boxes(mask)] == [[1, 1, 4, 4]]


def test_min_area_drops_small_components():
    mask = two_blobs()
    mask[0, 0] = 1  # a single pixel
    assert len(mask_to_boxes(mask)) == 3
    assert [b.xyxy for b in mask_to_boxes(mask, min_area=2)] == [[3, 2, 8, 6], [9, 7, 12, 9]]
    assert [b.xyxy for b in mask_to_boxes(mask, min_area=7)] == [[3, 2, 8, 6]]
    assert mask_to_boxes(mask, min_area=100) == []


def test_one_box_rule_surrounds_all_kept_foreground():
    mask = two_blobs()
    assert [b.xyxy for b in mask_to_boxes(mask, one_box=True)] == [[3, 2, 12, 9]]
    mask[0, 0] = 1
    assert [b.xyxy for b in mask_to_boxes(mask, one_box=True)] == [[0, 0, 12, 9]]
    assert [b.xyxy for b in mask_to_boxes(mask, one_box=True, min_area=2)] == [[3, 2, 12, 9]]


def test_label_map_gives_one_class_per_value():
    mask = np.zeros((10, 10), np.int32)
    mask[0:2, 0:2] = 2      # label 2 → class 1
    mask[5:9, 5:9] = 1      # label 1 → class 0
    mask[0:3, 7:10] = 3     # label 3 → class 2
    mask[8:10, 0:1] = 3
    boxes = mask_to_boxes(mask)
    assert [(b.class_id, b.xyxy) for b in boxes] == [
        (0, [5, 5, 9, 9]), (1, [0, 0, 2, 2]), (2, [7, 0, 10, 3]), (2, [0, 8, 1, 10])]
    one = mask_to_boxes(mask, one_box=True)
    assert [(b.class_id, b.xyxy) for b in one] == [
        (0, [5, 5, 9, 9]), (1, [0, 0, 2, 2]), (2, [0, 0, 10, 10])]


def test_touching_labels_stay_separate_boxes():
    mask = np.zeros((4, 6), np.int32)
    mask[:, :3] = 1
    mask[:, 3:] = 2
    assert [(b.class_id, b.xyxy) for b in mask_to_boxes(mask)] == [(0, [0, 0, 3, 4]), (1, [3, 0, 6, 4])]


def test_yolo_conversion_round_trip():
    box = Box(3, 2, 8, 6, class_id=1)
    xc, yc, w, h = box.to_yolo(width=12, height=10)
    assert (xc, yc, w, h) == pytest.approx((5.5 / 12, 0.4, 5 / 12, 0.4))
    back = Box.from_yolo(xc, yc, w, h, width=12, height=10, class_id=1)
    assert back.xyxy == pytest.approx(box.xyxy) and back.class_id == 1


def test_bad_masks_and_arguments():
    with pytest.raises(DataError, match="2-D"):
        mask_to_boxes(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(DataError, match="min_area"):
        mask_to_boxes(np.zeros((2, 2), np.int32), min_area=0)
    with pytest.raises(DataError, match="negative"):
        mask_to_boxes(-np.ones((2, 2), np.int32))
    assert class_names_for(["lesion"], 1) == ["lesion"]
    with pytest.raises(MedistillError, match="label values up to 2"):
        class_names_for(["lesion"], 2)
