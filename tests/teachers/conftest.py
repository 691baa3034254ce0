"""Shared fixtures of the teacher tests."""

from __future__ import annotations

import pytest

from medistill.boxes.boxes_file import write_boxes
from medistill.boxes.oracle import boxes_from_masks
from medistill.data.phantoms import generate_phantoms


@pytest.fixture()
def phantom_set(tmp_path):
    """``make(n, size, seed)`` → ``(image_dir, boxes_path, boxes)``: phantoms and their oracle boxes in tmp_path."""
    def make(n: int, size: int, seed: int):
        generate_phantoms(tmp_path / "ph", n=n, size=size, seed=seed)
        boxes = boxes_from_masks(tmp_path / "ph" / "masks", tmp_path / "ph" / "images")
        write_boxes(tmp_path / "boxes.json", boxes)
        return tmp_path / "ph" / "images", tmp_path / "boxes.json", boxes

    return make
