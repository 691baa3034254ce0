"""Student probability maps to prompts, and the merge rule with the detector's boxes."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from medistill.boxes.boxes_file import Box
from medistill.distill.meddistill import prompts
from medistill.distill.meddistill.prompts import (
    PromptRule,
    StudentBox,
    greedy_matches,
    iou_matrix,
    is_confirmed_negative,
    merge_prompts,
    student_boxes,
    teacher_rejects,
    widen,
)
from medistill.errors import MedistillError

NO_MARGIN = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=0.0)


def blob(shape, rows, cols, value=0.9) -> np.ndarray:
    prob = np.zeros(shape, np.float32)
    prob[rows, cols] = value
    return prob


def test_student_boxes_are_tight_pixel_edge_boxes_with_mean_probability():
    prob = blob((32, 40), slice(3, 9), slice(10, 20), 0.9)
    prob[5, 12] = 0.6                      # inside: lowers the mean
    prob[20:22, 30:32] = 0.95              # 4 pixels: kept at min_area 4
    prob[28, 2] = 0.99                     # a 1-pixel speck: dropped
    prob[0:2, 0:2] = 0.4                   # below the threshold: not a component
    found = student_boxes(prob, NO_MARGIN)
    assert [s.box.xyxy for s in found] == [[10.0, 3.0, 20.0, 9.0], [30.0, 20.0, 32.0, 22.0]]
    assert [s.area for s in found] == [60, 4]
    assert found[0].score == pytest.approx((59 * 0.9 + 0.6) / 60, abs=1e-6)
    assert found[0].box.score == pytest.approx(found[0].score)
    assert student_boxes(prob, PromptRule(min_area=5, margin_pixels=0, margin_fraction=0))[-1].area == 60


def test_min_area_scales_with_the_image():
    rule = PromptRule(min_area=9, min_area_fraction=0.001)
    assert rule.min_pixels(64, 64) == 9
    assert rule.min_pixels(512, 512) == 263
    assert student_boxes(np.zeros((8, 8), np.float32), rule) == []


def test_diagonal_pixels_are_one_component_and_softmax_maps_are_reduced():
    prob = np.zeros((10, 10), np.float32)
    for i in range(5):
        prob[i, i] = 1.0
    found = student_boxes(prob, NO_MARGIN)
    assert len(found) == 1 and found[0].box.xyxy == [0.0, 0.0, 5.0, 5.0] and found[0].area == 5
    softmax = np.stack([1.0 - prob, prob], axis=-1)
    assert student_boxes(softmax, NO_MARGIN)[0].box.xyxy == [0.0, 0.0, 5.0, 5.0]


def test_bad_maps_and_rules_are_refused():
    with pytest.raises(MedistillError, match="NaN"):
        student_boxes(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(MedistillError, match=r"\(H, W\)"):
        student_boxes(np.zeros(4, np.float32))
    with pytest.raises(MedistillError, match="match_iou"):
        PromptRule(match_iou=0.0)
    with pytest.raises(MedistillError, match="unknown"):
        PromptRule.from_dict({"treshold": 0.5})
    assert PromptRule.from_dict(PromptRule().to_dict()) == PromptRule()


def test_widen_adds_the_margin_and_stays_in_the_image():
    rule = PromptRule(margin_fraction=0.1, margin_pixels=2.0)
    assert widen(Box(10, 10, 50, 20), rule, 100, 100).xyxy == [6.0, 8.0, 54.0, 22.0]
    assert widen(Box(0, 1, 5, 40), rule, 6, 41).xyxy == [0.0, 0.0, 6.0, 41.0]


def test_iou_and_greedy_matching():
    a = [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]
    b = [Box(21, 21, 30, 30), Box(0, 0, 10, 9), Box(0, 0, 10, 5)]
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 1] == pytest.approx(0.9) and iou[1, 0] == pytest.approx(0.81)
    assert greedy_matches(iou, 0.5) == [(0, 1), (1, 0)]
    assert greedy_matches(iou, 0.95) == []
    assert iou_matrix([], b).shape == (0, 3)


def student(x1, y1, x2, y2, score=0.9, area=None) -> StudentBox:
    return StudentBox(Box(x1, y1, x2, y2, score=score), area or int((x2 - x1) * (y2 - y1)), score)


def test_a_matched_detector_box_is_replaced_by_the_widened_student_box():
    rule = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=1.0)
    detector = [Box(8, 8, 24, 24, score=0.55, class_id=2), Box(40, 40, 50, 50, score=0.7)]
    merged = merge_prompts(detector, [student(10, 10, 20, 20, score=0.8)], 64, 64, rule)
    assert merged.origins == ["replaced", "kept"]
    assert merged.boxes[0] == Box(9, 9, 21, 21, score=0.8, class_id=2)   # detector's class, larger score
    assert merged.boxes[1] is detector[1]                               # unmatched detector box kept
    assert merged.count("replaced") == 1 and merged.added == []


def test_unmatched_student_boxes_are_added_only_when_confident():
    rule = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=0.0, add_score=0.8, add_area_factor=2.0)
    candidates = [student(2, 2, 6, 6, score=0.95),        # 16 px >= 8, confident: added
                  student(30, 30, 32, 33, score=0.99),    # 6 px < 2 x 4: too small
                  student(50, 50, 58, 58, score=0.7)]     # unsure
    merged = merge_prompts([], candidates, 64, 64, rule)
    assert merged.origins == ["added"] and merged.boxes[0] == Box(2, 2, 6, 6, score=0.95, class_id=0)
    assert merged.skipped == {"inside": 0, "rejected": 0, "unconfident": 2, "not_allowed": 0}
    assert not is_confirmed_negative([], merged)


def test_pieces_inside_a_detector_box_and_rejected_boxes_are_not_added():
    rule = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=0.0, add_score=0.5)
    detector = [Box(0, 0, 40, 40)]
    candidates = [student(2, 2, 36, 36), student(30, 30, 38, 38), student(50, 50, 60, 60)]
    merged = merge_prompts(detector, candidates, 64, 64, rule, rejected=[Box(51, 51, 60, 60)])
    assert merged.origins == ["replaced"]
    assert merged.skipped == {"inside": 1, "rejected": 1, "unconfident": 0, "not_allowed": 0}
    # everything the student saw on an image without detector boxes was rejected: confirmed negative
    only_rejected = merge_prompts([], [candidates[2]], 64, 64, rule, rejected=[Box(51, 51, 60, 60)])
    assert only_rejected.boxes == [] and is_confirmed_negative([], only_rejected)
    assert is_confirmed_negative([], merge_prompts([], [], 64, 64, rule))
    assert not is_confirmed_negative(detector, merge_prompts(detector, [], 64, 64, rule))


def test_two_student_boxes_on_one_detector_box_match_one_to_one():
    rule = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=0.0, match_iou=0.3, add_score=0.5)
    detector = [Box(0, 0, 20, 10)]
    merged = merge_prompts(detector, [student(0, 0, 9, 10), student(11, 0, 20, 10)], 64, 64, rule)
    assert merged.origins == ["replaced"] and merged.boxes[0].xyxy == [0.0, 0.0, 9.0, 10.0]
    assert merged.skipped["inside"] == 1


def test_teacher_rejects_boxes_whose_mask_is_nearly_empty():
    masks = np.zeros((3, 20, 20), np.float32)
    masks[0, :5, :5] = 0.9     # 25 px
    masks[1, :2, :2] = 0.9     # 4 px < 9
    masks[2] = 0.4             # nothing above 0.5
    assert teacher_rejects(masks, 20, 20, PromptRule(min_area=9)).tolist() == [False, True, True]
    assert teacher_rejects(np.zeros((0, 20, 20)), 20, 20).shape == (0,)


def test_a_tight_detector_box_on_a_small_object_still_matches():
    rule = PromptRule(min_area=4, margin_fraction=0.1, margin_pixels=2.0)
    # a 5x5 object: its widened box (9x9) has IoU 0.31 with the tight box, the tight box 1.0
    merged = merge_prompts([Box(10, 10, 15, 15, score=1.0)], [student(10, 10, 15, 15, score=0.9)], 64, 64, rule)
    assert merged.origins == ["replaced"] and merged.boxes[0].xyxy == [8.0, 8.0, 17.0, 17.0]
    # and a box rejected before blocks the same student box again, widened or not
    again = merge_prompts([], [student(40, 40, 45, 45)], 64, 64, rule, rejected=[Box(38, 38, 47, 47)])
    assert again.boxes == [] and again.skipped["rejected"] == 1


def test_nothing_is_added_when_adding_is_not_allowed():
    rule = PromptRule(min_area=4, margin_fraction=0.0, margin_pixels=0.0)
    merged = merge_prompts([Box(0, 0, 10, 10)], [student(0, 0, 9, 10), student(40, 40, 50, 50, score=0.99)],
                           64, 64, rule, add=False)
    assert merged.origins == ["replaced"] and merged.skipped["not_allowed"] == 1


def test_the_docstring_examples_run():
    result = doctest.testmod(prompts, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
