"""Masks to boxes: one box per connected component (or one per class with ``one_box``).

MedDistill's box data, and why one box per component (docs/methods.md §1).

A label map gives one class per foreground value: value ``v`` becomes class ``v - 1``
(YOLO classes count from 0), so a binary mask gives class 0 and the classes of a label
map mean the same in every image. Components are found with 8-connectivity, per value;
components smaller than ``min_area`` pixels are dropped. With ``one_box=True`` the boxes
follow the released MedDistill rule, one box around all (kept) foreground pixels, made
per class so that a label map still gives one box per organ.

Boxes are in pixel-edge coordinates (see :mod:`medistill.boxes.boxes_file`): a
component covering columns 3..7 and rows 2..5 gives ``Box(3, 2, 8, 6)``.

>>> import numpy as np
>>> mask = np.zeros((10, 12), np.int32)
>>> mask[2:6, 3:8] = 1       # a 4x5 blob
>>> mask[8, 10] = 1          # a single pixel
>>> [box.xyxy for box in mask_to_boxes(mask)]
[[3.0, 2.0, 8.0, 6.0], [10.0, 8.0, 11.0, 9.0]]
>>> [box.xyxy for box in mask_to_boxes(mask, min_area=2)]
[[3.0, 2.0, 8.0, 6.0]]
>>> [box.xyxy for box in mask_to_boxes(mask, one_box=True)]
[[3.0, 2.0, 11.0, 9.0]]
"""

from __future__ import annotations

import cv2
import numpy as np

from medistill.boxes.boxes_file import Box
from medistill.errors import DataError, MedistillError


def mask_to_boxes(mask: np.ndarray, min_area: int = 1, one_box: bool = False) -> list[Box]:
    """Boxes of a label map ``(H, W)``: sorted by class, then top to bottom, left to right."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"a mask must be 2-D to make boxes, got shape {mask.shape}")
    if min_area < 1:
        raise DataError(f"min_area must be at least 1 pixel, got {min_area}")
    if mask.size and mask.min() < 0:
        raise DataError("a mask must not hold negative labels")
    boxes: list[Box] = []
    for value in np.unique(mask):
        if value == 0:
            continue
        stats = _component_stats(mask == value)
        kept = stats[stats[:, cv2.CC_STAT_AREA] >= min_area]
        if len(kept) == 0:
            continue
        class_id = int(value) - 1
        if one_box:
            left, top = kept[:, cv2.CC_STAT_LEFT].min(), kept[:, cv2.CC_STAT_TOP].min()
            right = (kept[:, cv2.CC_STAT_LEFT] + kept[:, cv2.CC_STAT_WIDTH]).max()
            bottom = (kept[:, cv2.CC_STAT_TOP] + kept[:, cv2.CC_STAT_HEIGHT]).max()
            boxes.append(Box(float(left), float(top), float(right), float(bottom), 1.0, class_id))
            continue
        order = np.lexsort((kept[:, cv2.CC_STAT_LEFT], kept[:, cv2.CC_STAT_TOP]))
        for left, top, width, height, _ in kept[order]:
            boxes.append(Box(float(left), float(top), float(left + width), float(top + height),
                             1.0, class_id))
    return boxes


def _component_stats(foreground: np.ndarray) -> np.ndarray:
    """``(N, 5)`` rows of (left, top, width, height, area), one per 8-connected component."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(
        foreground.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return stats[1:count]  # row 0 is the background


def class_names_for(given: list[str] | None, num_classes: int) -> list[str]:
    """Class names for ``num_classes`` classes: ``given``, or names saying the label value.

    >>> class_names_for(None, 1), class_names_for(None, 2)
    (['foreground'], ['label_1', 'label_2'])
    """
    if given:
        if len(given) < num_classes:
            raise MedistillError(
                f"--class-names lists {len(given)} name(s) but the masks hold label values "
                f"up to {num_classes} (class {num_classes - 1}); give one name per label value "
                "1, 2, ...")
        return list(given)
    if num_classes <= 1:
        return ["foreground"]
    return [f"label_{k + 1}" for k in range(num_classes)]


def boxes_to_mask(boxes: list[Box], height: int, width: int) -> np.ndarray:
    """The boxes filled as one ``bool (H, W)`` mask: the pixels whose centres lie inside a box.

    The box-as-mask baseline: what a segmentation adds over its prompt.

    >>> boxes_to_mask([Box(1, 0, 3, 2)], 3, 4).astype(int).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    mask = np.zeros((height, width), bool)
    for box in boxes:
        x1, y1 = int(np.ceil(box.x1 - 0.5)), int(np.ceil(box.y1 - 0.5))
        x2, y2 = int(np.floor(box.x2 - 0.5)) + 1, int(np.floor(box.y2 - 0.5)) + 1
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return mask
