"""A YOLO set's images and label files: 8-bit pixels, ``class xc yc w h`` lines and back.

:func:`to_uint8` is the one 8-bit conversion (the YOLO set's PNGs and the detector's
input, :mod:`medistill.boxes.detector_predict`); :func:`yolo_label_lines` writes a label
file's lines, :func:`read_yolo_labels` reads them back as pixel boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medistill.boxes.boxes_file import Box
from medistill.errors import DataError


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit copy of an image: 0..255 integers unchanged, anything else min-max stretched.

    >>> to_uint8(np.array([[0.0, 128.0, 255.0]])).tolist()
    [[0, 128, 255]]
    >>> to_uint8(np.array([[1000.0, 1500.0, 3000.0]])).tolist()
    [[0, 64, 255]]
    """
    image = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if image.size == 0:
        return image.astype(np.uint8)
    low, high = float(image.min()), float(image.max())
    if low >= 0 and high <= 255 and np.array_equal(image, np.round(image)):
        return image.astype(np.uint8)
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.rint((image - low) / (high - low) * 255.0).astype(np.uint8)


def yolo_label_lines(boxes: list[Box], width: int, height: int) -> list[str]:
    """One ``"class xc yc w h"`` line per box, normalised, six decimals.

    >>> yolo_label_lines([Box(3, 2, 8, 6, class_id=0)], width=16, height=8)
    ['0 0.343750 0.500000 0.312500 0.500000']
    """
    lines = []
    for box in boxes:
        xc, yc, w, h = box.to_yolo(width, height)
        lines.append(f"{box.class_id} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    return lines


def read_yolo_labels(path: str | os.PathLike, width: int, height: int) -> list[Box]:
    """The boxes of a YOLO label file, in pixels of a ``width`` x ``height`` image."""
    path = Path(path)
    if not path.is_file():
        return []  # ultralytics treats a missing label file as an image without objects
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            class_id, values = int(parts[0]), [float(v) for v in parts[1:5]]
        except ValueError as error:
            raise DataError(f"{path} line {number}: {line!r} is not 'class xc yc w h'") from error
        if len(parts) != 5:
            raise DataError(f"{path} line {number}: {line!r} is not 'class xc yc w h' "
                            "(this reader handles detection labels only)")
        boxes.append(Box.from_yolo(*values, width=width, height=height, class_id=class_id))
    return boxes
