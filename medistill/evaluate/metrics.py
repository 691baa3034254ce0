"""Segmentation metrics for one image, with fixed rules for empty masks.

The numbers come from :mod:`medpy.metric.binary`. medpy raises on distances to an empty
mask and returns 0 for ratios whose denominator is 0; neither is what a report needs, so
every result carries a ``case`` and the empty cases follow these rules:

==============  =========  ==========  ===========  ===========  =========
case            dice, iou  hd95, assd  sensitivity  specificity  precision
==============  =========  ==========  ===========  ===========  =========
normal          medpy      medpy       medpy        medpy*       medpy
both_empty      1          0           NaN          medpy*       NaN
missed          0          NaN         0            medpy*       NaN
false_positive  0          NaN         NaN          medpy*       0
==============  =========  ==========  ===========  ===========  =========

- ``missed``: the truth has foreground, the prediction has none.
- ``false_positive``: the truth is empty, the prediction is not.
- NaN means "undefined": a ratio with nothing to count (sensitivity without true
  foreground, precision without predicted foreground) or a distance to an empty set.
  Reports leave NaN out of means and count the cases instead.
- ``*`` specificity is NaN when the truth has no background at all (nothing to count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from medpy.metric import binary as medpy_binary

METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95",
    "assd",
    "sensitivity",
    "specificity",
    "precision",
)
CASES: tuple[str, ...] = ("normal", "both_empty", "missed", "false_positive")
MEAN_FOREGROUND = "mean_foreground"

Spacing = float | Sequence[float] | None

# Fixed values (all but specificity) when prediction or truth is empty; see above.
EMPTY_CASE_VALUES: dict[str, dict[str, float]] = {
    "both_empty": {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0,
                   "sensitivity": math.nan, "precision": math.nan},
    "missed": {"dice": 0.0, "iou": 0.0, "hd95": math.nan, "assd": math.nan,
               "sensitivity": 0.0, "precision": math.nan},
    "false_positive": {"dice": 0.0, "iou": 0.0, "hd95": math.nan, "assd": math.nan,
                       "sensitivity": math.nan, "precision": 0.0},
}


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """A boolean foreground mask from a bool, integer or {0, 1} float array.

    Float arrays with other values are refused: probabilities and logits must be
    thresholded by the caller (after the activation), never here.
    """
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isin(array, (0.0, 1.0)).all():
            raise ValueError(
                f"{name} is a float array with values other than 0 and 1; threshold "
                "probabilities (after sigmoid/softmax) before computing metrics"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} has dtype {array.dtype}; expected bool or integer")
    return array != 0


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from ground-truth shape {truth.shape}"
        )


def _voxel_spacing(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    """Validate ``spacing`` (one number, or one per axis) for medpy."""
    if spacing is None:
        return None
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(map(float, spacing))
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing!r} must have {ndim} values, one per axis")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing {spacing!r} must be positive and finite")
    return values


def classify_case(pred: np.ndarray, truth: np.ndarray) -> str:
    """Which of :data:`CASES` a pair of boolean masks falls into."""
    pred_any, truth_any = bool(pred.any()), bool(truth.any())
    if pred_any and truth_any:
        return "normal"
    if truth_any:
        return "missed"
    if pred_any:
        return "false_positive"
    return "both_empty"


def _specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    # medpy returns 0 when the truth has no background; that is undefined, not 0.
    if truth.all():
        return math.nan
    return float(medpy_binary.specificity(pred, truth))


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks; 1.0 when both are empty."""
    a_mask, b_mask = as_binary_mask(a, "a"), as_binary_mask(b, "b")
    _check_same_shape(a_mask, b_mask)
    total = int(a_mask.sum()) + int(b_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a_mask, b_mask).sum()) / total


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None) -> dict:
    """Metrics of a binary prediction against its ground truth.

    Returns ``{"case": str, "dice", "iou", "hd95", "assd", "sensitivity",
    "specificity", "precision": float}``; see the module docstring for the empty-mask
    rules. ``spacing`` (one number or one per axis, e.g. mm per pixel) scales the
    distances only.
    """
    pred_mask = as_binary_mask(pred, "prediction")
    truth_mask = as_binary_mask(truth, "ground truth")
    _check_same_shape(pred_mask, truth_mask)
    voxel_spacing = _voxel_spacing(spacing, truth_mask.ndim)
    case = classify_case(pred_mask, truth_mask)
    specificity = _specificity(pred_mask, truth_mask)

    if case == "normal":
        values = {
            "dice": medpy_binary.dc(pred_mask, truth_mask),
            "iou": medpy_binary.jc(pred_mask, truth_mask),
            "hd95": medpy_binary.hd95(pred_mask, truth_mask, voxelspacing=voxel_spacing),
            "assd": medpy_binary.assd(pred_mask, truth_mask, voxelspacing=voxel_spacing),
            "sensitivity": medpy_binary.sensitivity(pred_mask, truth_mask),
            "precision": medpy_binary.precision(pred_mask, truth_mask),
        }
    else:
        values = dict(EMPTY_CASE_VALUES[case])
    values["specificity"] = specificity
    return {"case": case, **{name: float(values[name]) for name in METRIC_NAMES}}


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"{name} has labels in [{array.min()}, {array.max()}], outside 0..{num_classes - 1}"
        )
    return array


def mean_over_classes(per_class: Sequence[dict], case: str) -> dict:
    """NaN-safe mean of per-class metrics, skipping classes absent from both masks.

    A class that is empty in both prediction and truth tells nothing about this image,
    so it is left out; when every class is, the image-level ``both_empty`` values are
    used. ``n_classes`` says how many classes were averaged.
    """
    present = [m for m in per_class if m["case"] != "both_empty"]
    if not present:
        specificities = [m["specificity"] for m in per_class]
        specificity = float(np.mean(specificities)) if specificities else math.nan
        return {"case": case, **EMPTY_CASE_VALUES["both_empty"], "specificity": specificity,
                "n_classes": 0}
    means = {}
    for name in METRIC_NAMES:
        defined = [m[name] for m in present if not math.isnan(m[name])]
        means[name] = float(np.mean(defined)) if defined else math.nan
    return {"case": case, **means, "n_classes": len(present)}


def multiclass_metrics(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    num_classes: int,
    spacing: Spacing = None,
) -> dict[int | str, dict]:
    """Per-class :func:`binary_metrics` for classes ``1..num_classes-1``.

    The result maps each class index to its metrics, and ``"mean_foreground"`` to
    :func:`mean_over_classes`, whose ``case`` is the case of the foreground union
    (any label > 0) of prediction and truth.
    """
    if num_classes < 2:
        raise ValueError(
            f"num_classes must be at least 2 (background + one class), got {num_classes}"
        )
    pred = _check_labels(pred_labels, num_classes, "prediction")
    truth = _check_labels(truth_labels, num_classes, "ground truth")
    _check_same_shape(pred, truth)
    results: dict[int | str, dict] = {
        label: binary_metrics(pred == label, truth == label, spacing)
        for label in range(1, num_classes)
    }
    union_case = classify_case(pred > 0, truth > 0)
    results[MEAN_FOREGROUND] = mean_over_classes(list(results.values()), union_case)
    return results
