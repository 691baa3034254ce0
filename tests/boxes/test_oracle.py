"""boxes-from-masks: oracle boxes in the boxes-file format, optionally jittered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.boxes import read_boxes
from medistill.boxes.oracle import boxes_from_masks, jitter_box
from medistill.boxes.boxes_file import Box
from medistill.cli import main
from medistill.errors import MedistillError


def test_oracle_boxes_from_masks(two_blob_set: Path, tmp_path: Path):
    out = tmp_path / "boxes.json"
    assert main(["detect", "boxes-from-masks", "--mask_dir", str(two_blob_set / "masks"),
                 "--out", str(out)]) == 0
    boxes = read_boxes(out)
    assert [e.stem for e in boxes.images] == ["diagonal", "empty", "two"]
    entries = boxes.by_stem()
    assert [b.xyxy for b in entries["two"].boxes] == [[3, 2, 8, 6], [9, 7, 12, 9]]
    assert entries["empty"].boxes == [] and (entries["two"].width, entries["two"].height) == (12, 10)
    assert all(b.score == 1.0 for e in boxes.images for b in e.boxes)
    assert boxes.source["kind"] == "masks" and boxes.class_names == ["foreground"]


def test_oracle_with_images_names_the_image_files(tmp_path: Path, pair_writer):
    root = tmp_path / "set"
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:4] = 255
    pair_writer(root, "case1", np.zeros((6, 6)), mask)
    (root / "images" / "case1.png").rename(root / "images" / "case1.bmp")
    boxes = boxes_from_masks(root / "masks", image_dir=root / "images", one_box=True,
                             class_names=["lesion"])
    assert boxes.images[0].file == "case1.bmp" and boxes.class_names == ["lesion"]
    assert boxes.images[0].boxes[0].xyxy == [1, 1, 4, 3]


def test_jitter_is_seeded_bounded_and_inside_the_image(two_blob_set: Path):
    plain = boxes_from_masks(two_blob_set / "masks")
    first = boxes_from_masks(two_blob_set / "masks", jitter=0.2, seed=1)
    again = boxes_from_masks(two_blob_set / "masks", jitter=0.2, seed=1)
    other = boxes_from_masks(two_blob_set / "masks", jitter=0.2, seed=2)
    assert first == again and first != other and first != plain
    for exact, moved in zip(plain.images, first.images):
        for a, b in zip(exact.boxes, moved.boxes):
            assert abs(a.x1 - b.x1) <= 0.2 * a.width + 1e-9 and abs(a.y2 - b.y2) <= 0.2 * a.height + 1e-9
            assert 0 <= b.x1 < b.x2 <= exact.width and 0 <= b.y1 < b.y2 <= exact.height


def test_jitter_keeps_boxes_at_least_a_pixel():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = jitter_box(Box(0, 0, 1, 1), 0.99, rng, 4, 4)
        assert box.width >= 1 - 1e-9 and box.height >= 1 - 1e-9
        assert 0 <= box.x1 and box.x2 <= 4


def test_bad_options(two_blob_set: Path, tmp_path: Path, capsys):
    with pytest.raises(MedistillError, match="--jitter"):
        boxes_from_masks(two_blob_set / "masks", jitter=1.5)
    assert main(["detect", "boxes-from-masks", "--mask_dir", str(two_blob_set / "masks"),
                 "--out", str(tmp_path / "b.json"), "--mask-suffix", "_m"]) == 2
    assert "--mask-suffix needs --image_dir" in capsys.readouterr().err
    assert main(["detect", "boxes-from-masks", "--mask_dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "b.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
