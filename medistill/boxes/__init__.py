"""Boxes: masks → YOLO detection sets, the YOLO box detector, and the boxes file.

The detector side (:mod:`medistill.boxes.detector`, :mod:`medistill.boxes.offline`)
uses ultralytics/torch and is imported only on demand; everything here imports
neither torch nor TensorFlow.
"""

from medistill.boxes.boxes_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Box,
    BoxesFile,
    ImageBoxes,
    check_image_paths,
    image_path,
    read_boxes,
    write_boxes,
)
from medistill.boxes.components import class_names_for, mask_to_boxes
from medistill.boxes.metrics import BoxMatch, iou_matrix, match_boxes

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Box",
    "BoxMatch",
    "BoxesFile",
    "ImageBoxes",
    "check_image_paths",
    "class_names_for",
    "image_path",
    "iou_matrix",
    "mask_to_boxes",
    "match_boxes",
    "read_boxes",
    "write_boxes",
]
