"""--tight-boxes: the projection term's boxes shrink to the teacher's mask, the outside term keeps the boxes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medistill.boxes.boxes_file import read_boxes, write_boxes
from medistill.boxes.oracle import boxes_from_masks
from medistill.data.phantoms import generate_phantoms
from medistill.data.preprocess import PreprocessConfig
from medistill.distill.meddistill import data as md
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.distill.meddistill.tight_boxes import tighten_boxes
from medistill.losses.label_free import rasterise_boxes
from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty
from medistill.teachers.cache import build_cache
from medistill.teachers.registry import register_teacher


class CentreTeacher(Teacher):
    """0.9 on the middle half of each box (a teacher whose masks are tighter than the boxes)."""

    name = "centre-half"

    def _predict(self, image, boxes):
        height, width = image.shape[:2]
        masks = np.zeros((len(boxes), height, width), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 4, 1), max((y2 - y1) / 4, 1)
            masks[i, int(cy - hh): int(np.ceil(cy + hh)), int(cx - hw): int(np.ceil(cx + hw))] = 0.9
        return TeacherOutput(masks, mask_uncertainty(masks), None, None, None, boxes)


register_teacher("centre-half", lambda argument: CentreTeacher())


@pytest.fixture(scope="module")
def loose(tmp_path_factory) -> dict:
    """Phantoms whose boxes are their lesions' boxes grown by 6 px on every side (a loose detector)."""
    root = tmp_path_factory.mktemp("tight")
    generate_phantoms(root / "ph", 6, size=64, seed=2)
    boxes = boxes_from_masks(root / "ph" / "masks", root / "ph" / "images")
    for entry in boxes.images:
        entry.boxes = [dataclasses.replace(b, x1=max(0, b.x1 - 6), y1=max(0, b.y1 - 6), x2=min(entry.width, b.x2 + 6),
                                           y2=min(entry.height, b.y2 + 6)) for b in entry.boxes]
    boxes.source = {"kind": "detector"}
    write_boxes(root / "boxes.json", boxes)
    build_cache(CentreTeacher(), root / "ph" / "images", root / "boxes.json", root / "cache.h5", progress=False)
    entries = sorted(read_boxes(root / "boxes.json").images, key=lambda e: e.stem)
    assert sum(len(e.boxes) for e in entries) >= 3
    return {"root": root, "entries": entries}


def test_a_box_shrinks_to_its_masks_extent_and_never_grows():
    masks = np.zeros((3, 10, 10), np.float32)
    masks[0, 4:6, 2:9] = 0.8          # reaches beyond the box on the right: clipped to the box
    masks[1, 0:2, 0:2] = 0.4          # below the threshold: the box stays as it is
    masks[2, 5, 5] = 0.9
    boxes = np.array([[1, 1, 7, 9], [0, 0, 4, 4], [2.5, 2.5, 8.5, 8.5]], np.float32)
    tight, confirmed = tighten_boxes(boxes, masks)
    assert tight.tolist() == [[2, 4, 7, 6], [0, 0, 4, 4], [5, 5, 6, 6]]
    assert confirmed.tolist() == [True, False, True]
    assert np.all(tight[:, :2] >= boxes[:, :2]) and np.all(tight[:, 2:] <= boxes[:, 2:])
    with pytest.raises(ValueError, match="2 boxes but 3 masks"):
        tighten_boxes(boxes[:2], masks)


@pytest.mark.parametrize("augment", [False, True])
def test_the_projection_term_gets_the_tight_boxes_and_the_outside_term_the_detectors(loose, augment):
    root, entries = loose["root"], loose["entries"]
    pre = PreprocessConfig(size=64)
    plain = md.load_from_cache(root / "cache.h5", root / "ph" / "images", entries, pre, grid=None)
    tight = md.load_from_cache(root / "cache.h5", root / "ph" / "images", entries, pre, grid=None, tighten=True)
    assert plain.proj_rows is None
    for data in (plain, tight):
        batch = next(iter(md.training_dataset(data, len(data), epoch=1, seed=0, augment=augment,
                                              shuffle=False, drop_remainder=False)))
        order, flips = md.epoch_plan(len(data), 1, 0, False, augment)
        for k, (i, flip) in enumerate(zip(order, flips)):
            # the outside term always sees the detector's (loose) boxes
            np.testing.assert_array_equal(batch["inside"][k].numpy(), md.flip_maps(plain.inside(i), flip))
            rows, cols = batch["rows"][k].numpy(), batch["cols"][k].numpy()
            rows, cols = (rows[:, ::-1] if flip[1] else rows), (cols[:, ::-1] if flip[0] else cols)
            if data is plain:
                np.testing.assert_array_equal(rows, plain.box_rows[i])
                continue
            # each tight box spans exactly the rows and columns of its teacher mask (> 0.5)
            for m in range(len(entries[i].boxes)):
                assert rows[m].sum() < plain.box_rows[i, m].sum() and cols[m].sum() < plain.box_cols[i, m].sum()
                assert np.all(rows[m] <= plain.box_rows[i, m]) and np.all(cols[m] <= plain.box_cols[i, m])
    masks = CentreTeacher()._predict(np.zeros((64, 64, 1), np.float32),
                                     np.array([b.xyxy for b in entries[0].boxes], np.float32))
    expected_rows, expected_cols = rasterise_boxes(
        tighten_boxes(np.array([b.xyxy for b in entries[0].boxes], np.float32), masks.masks)[0], 1.0, 64)
    n = len(entries[0].boxes)
    np.testing.assert_array_equal(tight.proj_rows[0, :n], expected_rows)
    np.testing.assert_array_equal(tight.proj_cols[0, :n], expected_cols)


def test_the_option_reaches_the_data_only_with_the_projection_term_and_loose_boxes(loose, monkeypatch):
    from medistill.distill.meddistill import targets

    seen = []
    real = md.load_from_cache

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tighten", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(md, "load_from_cache", spy)
    root = loose["root"]

    class Session:
        out = root

    from_masks = root / "boxes_from_masks.json"
    write_boxes(from_masks, boxes_from_masks(root / "ph" / "masks", root / "ph" / "images"))
    for tight_boxes, terms, boxes, expected in ((True, ["bce", "proj"], "boxes.json", True),
                                                (False, ["bce", "proj"], "boxes.json", False),
                                                (True, ["bce", "dice"], "boxes.json", False),
                                                (True, ["bce", "proj"], from_masks.name, False)):
        seen.clear()
        config = MedDistillConfig(image_dir=str(root / "ph" / "images"), boxes=str(root / boxes),
                                  out=str(root / "run"), teacher="centre-half", cache=str(root / "cache.h5"),
                                  img_size=64, terms=terms, tight_boxes=tight_boxes, val_fraction=0.0)
        monkeypatch.setattr(targets, "prepare_cache", lambda *a, **k: None)
        prepared = targets.prepare_data(config, Session(), lambda info: None)
        assert seen[0] is expected
        assert (prepared.train.proj_rows is not None) is expected


def test_live_teacher_mode_keeps_the_boxes_and_says_so(caplog):
    from medistill.distill.meddistill.targets import tighten_projection_boxes

    config = MedDistillConfig(image_dir="i", boxes="b", out="o", tight_boxes=True, live_teacher=True)
    with caplog.at_level("WARNING", logger="medistill.distill"):
        assert tighten_projection_boxes(config, {"kind": "detector"}) is False
    assert "--live-teacher" in caplog.text
    assert tighten_projection_boxes(dataclasses.replace(config, live_teacher=False), {"kind": "detector"}) is True


def test_the_command_line_flag_sets_the_option():
    import argparse

    from medistill.cli import meddistill as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--image_dir", "i", "--boxes", "b", "--out", "o"]
    assert cli.config_from_args(parser.parse_args(base + ["--tight-boxes"])).tight_boxes is True
    assert cli.config_from_args(parser.parse_args(base + ["--no-tight-boxes"])).tight_boxes is False
