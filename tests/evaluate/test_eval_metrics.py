"""Metrics against values counted by hand on tiny masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medistill.evaluate.metrics import (
    MEAN_FOREGROUND,
    METRIC_NAMES,
    binary_metrics,
    dice_score,
    multiclass_metrics,
)


def square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def assert_metrics(result: dict, expected: dict) -> None:
    for name, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(result[name]), f"{name}: expected NaN, got {result[name]}"
        else:
            assert result[name] == pytest.approx(value), name


# Truth: 4x4 square (16 px) at (0, 0); prediction: 3x3 square (9 px) at (2, 2) in 10x10.
# Overlap rows 2-3, cols 2-3: 4 px. False positives 5, false negatives 12.
# Truth background 84 px, of which 5 are predicted: true negatives 79.
TRUTH = square((10, 10), 0, 0, 4)
PRED = square((10, 10), 2, 2, 3)


def test_overlap_ratios_match_counted_pixels():
    result = binary_metrics(PRED, TRUTH)
    assert result["case"] == "normal"
    assert_metrics(result, {
        "dice": 2 * 4 / (16 + 9),
        "iou": 4 / (16 + 9 - 4),
        "sensitivity": 4 / 16,
        "precision": 4 / 9,
        "specificity": 79 / 84,
    })


def test_result_has_case_and_every_metric_as_float():
    result = binary_metrics(PRED, TRUTH)
    assert set(result) == {"case", *METRIC_NAMES}
    assert all(type(result[name]) is float for name in METRIC_NAMES)


def test_integer_label_masks_count_as_foreground():
    result = binary_metrics(PRED.astype(np.int32), TRUTH.astype(np.uint8) * 255)
    assert result["dice"] == pytest.approx(2 * 4 / 25)


def test_parallel_lines_three_pixels_apart():
    # Two one-pixel-wide vertical lines: every surface pixel is exactly 3 px from the other.
    truth = np.zeros((20, 20), bool)
    truth[2:12, 5] = True
    pred = np.zeros((20, 20), bool)
    pred[2:12, 8] = True
    result = binary_metrics(pred, truth)
    assert result["hd95"] == pytest.approx(3.0)
    assert result["assd"] == pytest.approx(3.0)


def test_spacing_scales_distances_per_axis():
    truth = np.zeros((20, 20), bool)
    truth[2:12, 5] = True
    pred = np.zeros((20, 20), bool)
    pred[2:12, 8] = True
    assert binary_metrics(pred, truth, spacing=(1.0, 0.5))["hd95"] == pytest.approx(1.5)
    assert binary_metrics(pred, truth, spacing=(4.0, 1.0))["hd95"] == pytest.approx(3.0)
    assert binary_metrics(pred, truth, spacing=2.0)["assd"] == pytest.approx(6.0)
    # Overlap ratios do not depend on spacing.
    assert binary_metrics(pred, truth, spacing=2.0)["dice"] == 0.0


def test_single_pixels_offset_by_three_four():
    truth = np.zeros((10, 10), bool)
    truth[1, 1] = True
    pred = np.zeros((10, 10), bool)
    pred[4, 5] = True
    assert binary_metrics(pred, truth)["hd95"] == pytest.approx(5.0)
    assert binary_metrics(pred, truth)["assd"] == pytest.approx(5.0)
    scaled = binary_metrics(pred, truth, spacing=(2.0, 1.0))
    assert scaled["hd95"] == pytest.approx(math.sqrt(6**2 + 4**2))


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask, as (N, 2) coordinates."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1))
    return np.argwhere(mask & ~eroded).astype(float)


def test_square_shifted_by_three_matches_brute_force_surface_distances():
    truth = square((40, 40), 10, 10, 12)
    pred = square((40, 40), 10, 13, 12)  # shifted 3 px to the right
    a, b = surface(pred), surface(truth)
    distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    pred_to_truth, truth_to_pred = distances.min(axis=1), distances.min(axis=0)
    both = np.concatenate([pred_to_truth, truth_to_pred])
    result = binary_metrics(pred, truth)
    assert both.max() == pytest.approx(3.0)  # the Hausdorff distance is the shift
    assert result["hd95"] == pytest.approx(np.percentile(both, 95))
    assert result["hd95"] <= 3.0
    assert result["assd"] == pytest.approx((pred_to_truth.mean() + truth_to_pred.mean()) / 2)
    assert 0.0 < result["assd"] < 3.0


def test_both_empty_is_perfect_agreement_with_undefined_ratios():
    empty = np.zeros((8, 8), bool)
    result = binary_metrics(empty, empty)
    assert result["case"] == "both_empty"
    assert_metrics(result, {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0,
                            "sensitivity": math.nan, "precision": math.nan, "specificity": 1.0})


def test_missed_object_has_zero_overlap_and_undefined_distances():
    empty = np.zeros((10, 10), bool)
    result = binary_metrics(empty, TRUTH)
    assert result["case"] == "missed"
    assert_metrics(result, {"dice": 0.0, "iou": 0.0, "hd95": math.nan, "assd": math.nan,
                            "sensitivity": 0.0, "precision": math.nan, "specificity": 1.0})


def test_false_positive_on_empty_truth():
    empty = np.zeros((10, 10), bool)
    result = binary_metrics(PRED, empty)
    assert result["case"] == "false_positive"
    assert_metrics(result, {"dice": 0.0, "iou": 0.0, "hd95": math.nan, "assd": math.nan,
                            "sensitivity": math.nan, "precision": 0.0,
                            "specificity": 91 / 100})


def test_specificity_undefined_when_truth_has_no_background():
    full = np.ones((5, 5), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warning leaks out
        result = binary_metrics(full, full)
    assert result["case"] == "normal"
    assert result["dice"] == 1.0
    assert math.isnan(result["specificity"])


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 12\)"):
        binary_metrics(np.zeros((10, 10), bool), np.zeros((10, 12), bool))


def test_probabilities_are_refused_but_binary_floats_accepted():
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(PRED * 0.7, TRUTH)
    assert binary_metrics(PRED.astype(np.float32), TRUTH)["dice"] == pytest.approx(0.32)


@pytest.mark.parametrize("spacing", [(1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, math.inf)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(PRED, TRUTH, spacing=spacing)


def test_dice_score_quick_function():
    assert dice_score(PRED, TRUTH) == pytest.approx(0.32)
    assert dice_score(np.zeros((3, 3)), np.zeros((3, 3), np.int32)) == 1.0
    assert dice_score(TRUTH, np.zeros_like(TRUTH)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros((3, 3)), np.zeros((3, 4)))


def label_maps():
    """Truth and prediction for 4 classes; class 3 appears in neither."""
    truth = np.zeros((6, 6), np.int32)
    truth[0:2, 0:2] = 1  # 4 px
    truth[3:6, 3:6] = 2  # 9 px
    pred = truth.copy()
    pred[0, 0] = 0  # class 1: 3 of 4 found, no false positive
    pred[5, 0:3] = 2  # class 2: 3 false positives, all 9 found
    return pred, truth


def test_multiclass_per_class_values():
    pred, truth = label_maps()
    result = multiclass_metrics(pred, truth, num_classes=4)
    assert set(result) == {1, 2, 3, MEAN_FOREGROUND}
    assert_metrics(result[1], {"dice": 2 * 3 / 7, "iou": 3 / 4, "sensitivity": 3 / 4,
                               "precision": 1.0, "specificity": 1.0})
    assert_metrics(result[2], {"dice": 2 * 9 / 21, "iou": 9 / 12, "sensitivity": 1.0,
                               "precision": 9 / 12, "specificity": 24 / 27})
    assert result[1]["case"] == result[2]["case"] == "normal"
    assert result[3]["case"] == "both_empty"


def test_multiclass_mean_skips_classes_absent_from_both():
    pred, truth = label_maps()
    mean = multiclass_metrics(pred, truth, num_classes=4)[MEAN_FOREGROUND]
    assert mean["n_classes"] == 2
    assert mean["case"] == "normal"
    assert mean["dice"] == pytest.approx((6 / 7 + 18 / 21) / 2)
    assert mean["sensitivity"] == pytest.approx((0.75 + 1.0) / 2)


def test_multiclass_mean_ignores_undefined_distances():
    truth = np.zeros((8, 8), np.int32)
    truth[0:2, 0:2] = 1
    truth[5:7, 5:7] = 2
    pred = np.where(truth == 2, 0, truth)  # class 2 missed entirely
    result = multiclass_metrics(pred, truth, num_classes=3)
    assert result[2]["case"] == "missed"
    mean = result[MEAN_FOREGROUND]
    assert mean["dice"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert mean["hd95"] == pytest.approx(0.0)  # only class 1 defines it
    assert mean["n_classes"] == 2


def test_multiclass_all_empty_image():
    empty = np.zeros((5, 5), np.int32)
    mean = multiclass_metrics(empty, empty, num_classes=3)[MEAN_FOREGROUND]
    assert mean["case"] == "both_empty"
    assert mean["dice"] == 1.0 and mean["n_classes"] == 0


def test_multiclass_union_case_when_only_prediction_has_foreground():
    truth = np.zeros((5, 5), np.int32)
    pred = truth.copy()
    pred[1, 1] = 2
    assert multiclass_metrics(pred, truth, 3)[MEAN_FOREGROUND]["case"] == "false_positive"


def test_multiclass_input_checks():
    pred, truth = label_maps()
    with pytest.raises(ValueError, match="outside 0..1"):
        multiclass_metrics(pred, truth, num_classes=2)
    with pytest.raises(ValueError, match="at least 2"):
        multiclass_metrics(pred, truth, num_classes=1)
    with pytest.raises(ValueError, match=r"\(6, 6\).*\(6, 5\)"):
        multiclass_metrics(pred, truth[:, :5], num_classes=4)
