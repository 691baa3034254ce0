"""Scoring a boxes file against masks, and choosing the detector's threshold, on hand-made boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medistill.boxes import Box, BoxesFile, ImageBoxes
from medistill.boxes.scoring import (
    DEFAULT_CONFIDENCES,
    MIN_BOXES,
    MIN_IMAGES,
    best_point,
    choose_confidence,
    confidence_curve,
    format_curve,
    match_by_stem,
    sample_warning,
    truth_boxes,
)
from medistill.errors import MedistillError


def boxes_file(entries: dict[str, list[Box]], conf: float | None = 0.01) -> BoxesFile:
    source = {"kind": "detector"} if conf is None else {"kind": "detector", "conf": conf}
    return BoxesFile(["lesion"], [ImageBoxes(f"{stem}.png", stem, 32, 32, boxes)
                                  for stem, boxes in entries.items()], source)


# Ground truth: two objects in "a", one in "b", none in "c".
TRUTH = {"a": [Box(0, 0, 8, 8), Box(20, 20, 28, 28)], "b": [Box(10, 10, 20, 20)], "c": []}
DETECTED = boxes_file({
    "a": [Box(0, 0, 8, 8, score=0.9), Box(20, 20, 28, 28, score=0.2)],  # both right
    "b": [Box(10, 10, 20, 20, score=0.4), Box(0, 20, 5, 25, score=0.3)],  # right, wrong
    "c": [Box(1, 1, 5, 5, score=0.1)],  # wrong
})


def test_truth_boxes_are_the_components_of_each_mask():
    mask = np.zeros((16, 16), np.int32)
    mask[2:5, 3:8] = 1  # rows 2..4, columns 3..7
    mask[10:12, 10:12] = 1
    mask[0, 15] = 1  # one pixel, dropped with min_area 2
    boxes = truth_boxes({"m": mask, "empty": np.zeros((4, 4), np.int32)}, min_area=2)
    assert boxes["empty"] == []
    assert sorted(tuple(b.xyxy) for b in boxes["m"]) == [(3, 2, 8, 5), (10, 10, 12, 12)]


def test_match_by_stem_counts_and_threshold():
    everything = match_by_stem(DETECTED, TRUTH)
    assert (everything.matched, everything.truths, everything.predictions) == (3, 3, 5)
    above = match_by_stem(DETECTED, TRUTH, conf=0.35)  # keeps 0.9 and 0.4
    assert (above.matched, above.predictions) == (2, 2)
    assert above.recall == pytest.approx(2 / 3) and above.precision == 1.0


def test_match_by_stem_refuses_unknown_and_missing_images():
    with pytest.raises(MedistillError, match="without a ground-truth mask.*'z'"):
        match_by_stem(boxes_file({"z": []}), TRUTH)
    partial = boxes_file({"a": [Box(0, 0, 8, 8)]})
    with pytest.raises(MedistillError, match="no entry for 2 image"):
        match_by_stem(partial, TRUTH)
    assert match_by_stem(partial, TRUTH, require_all=False).recall == pytest.approx(1 / 2)


def test_confidence_curve_by_hand():
    points = confidence_curve(DETECTED, TRUTH, candidates=(0.35, 0.05, 0.25))
    assert [p.conf for p in points] == [0.05, 0.25, 0.35]
    # conf 0.05: 3 of 3 found, 3 of 5 right; 0.25: boxes 0.9, 0.4, 0.3 kept: 2 of 3 right.
    assert [(p.matched, p.predictions) for p in points] == [(3, 5), (2, 3), (2, 2)]
    f1 = [2 * (3 / 3) * (3 / 5) / (1 + 3 / 5), 2 * (2 / 3) * (2 / 3) / (4 / 3), 2 * (2 / 3) * 1 / (5 / 3)]
    assert [p.f1 for p in points] == pytest.approx(f1)
    # F1: 0.75, 0.667, 0.8: the two surest boxes win.
    assert choose_confidence(DETECTED, TRUTH, candidates=(0.05, 0.25, 0.35)).conf == 0.35
    assert "* 0.35" in format_curve(points, chosen=0.35)


def test_ties_go_to_the_middle_of_the_flat_range_and_no_box_gives_f1_zero():
    found = boxes_file({"a": [Box(0, 0, 8, 8, score=0.9)], "b": [], "c": []})
    points = confidence_curve(found, TRUTH, candidates=(0.1, 0.5, 0.95))
    assert [p.f1 for p in points] == pytest.approx([0.5, 0.5, 0.0])
    assert best_point(points).conf == 0.1  # two equals: the lower middle
    assert math.isnan(points[2].precision)  # nothing kept
    # the case: F1 1.0 from 0.05 to 0.75 (one sure box) -> the middle, 0.4, not 0.05
    sure = boxes_file({"a": [Box(0, 0, 8, 8, score=0.8)]})
    flat = confidence_curve(sure, {"a": [Box(0, 0, 8, 8)]}, candidates=DEFAULT_CONFIDENCES)
    assert [p.conf for p in flat if p.f1 == 1.0] == [c for c in DEFAULT_CONFIDENCES if c <= 0.8]
    assert best_point(flat).conf == 0.4


def test_small_samples_are_named_in_a_warning():
    assert sample_warning(MIN_IMAGES, MIN_BOXES) is None
    text = sample_warning(2, 4)
    assert "2 image(s) with 4 ground-truth box(es)" in text and "--split" in text
    assert sample_warning(50, MIN_BOXES - 1) is not None


def test_threshold_checks():
    with pytest.raises(MedistillError, match="predicted with conf 0.3.*--conf 0.1"):
        confidence_curve(boxes_file({"a": []}, conf=0.3), TRUTH, candidates=(0.1, 0.5))
    with pytest.raises(MedistillError, match=r"in \[0, 1\]"):
        confidence_curve(DETECTED, TRUTH, candidates=(1.5,))
    with pytest.raises(MedistillError, match="no ground-truth object"):
        choose_confidence(boxes_file({"c": []}), {"c": []}, candidates=(0.1,))
