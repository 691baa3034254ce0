"""Box overlap and greedy matching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medistill.boxes import Box, BoxMatch, iou_matrix, match_boxes


def test_iou_matrix_values():
    overlaps = iou_matrix([Box(0, 0, 2, 2), Box(10, 10, 11, 11)], [Box(1, 0, 3, 2), Box(0, 0, 2, 2)])
    assert overlaps.shape == (2, 2)
    assert overlaps[0] == pytest.approx([1 / 3, 1.0])
    assert np.all(overlaps[1] == 0)
    assert iou_matrix([], [Box(0, 0, 1, 1)]).shape == (0, 1)


def test_greedy_matching_by_score_one_to_one():
    truth = [Box(0, 0, 10, 10)]
    found = [Box(0, 0, 10, 9, score=0.6), Box(0, 0, 10, 10, score=0.9)]
    result = match_boxes(found, truth)
    assert (result.matched, result.truths, result.predictions) == (1, 1, 2)
    assert result.mean_iou == pytest.approx(1.0)  # the higher-scoring box took the match
    assert result.recall == 1.0 and result.precision == 0.5


def test_class_aware_matching_and_threshold():
    truth = [Box(0, 0, 10, 10, class_id=0)]
    wrong_class = [Box(0, 0, 10, 10, class_id=1)]
    assert match_boxes(wrong_class, truth).matched == 0
    assert match_boxes(wrong_class, truth, class_aware=False).matched == 1
    shifted = [Box(5, 0, 15, 10)]  # IoU 1/3
    assert match_boxes(shifted, truth).matched == 0
    assert match_boxes(shifted, truth, iou_threshold=0.3).matched == 1


def test_counts_add_up_and_empty_cases():
    total = match_boxes([], [Box(0, 0, 1, 1)]) + match_boxes([Box(0, 0, 1, 1)], [Box(0, 0, 1, 1)])
    assert (total.matched, total.truths, total.predictions) == (1, 2, 1)
    assert total.recall == 0.5
    assert math.isnan(BoxMatch().recall) and math.isnan(BoxMatch().precision)
