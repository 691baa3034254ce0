"""Box overlap and box recall: how many ground-truth objects got a usable prompt.

Distillation prompts the foundation model with each predicted box, so the number that
matters is the fraction of ground-truth boxes covered by some prediction of the same
class with IoU >= 0.5 (box recall). Matching is greedy by score, one prediction per
ground-truth box, as in detection benchmarks.

>>> from medistill.boxes.boxes_file import Box
>>> truth = [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]
>>> found = [Box(1, 0, 11, 10, score=0.9), Box(50, 50, 60, 60, score=0.8)]
>>> match_boxes(found, truth).recall
0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medistill.boxes.boxes_file import Box


def iou_matrix(first: list[Box], second: list[Box]) -> np.ndarray:
    """``(len(first), len(second))`` intersection over union.

    >>> float(iou_matrix([Box(0, 0, 2, 2)], [Box(1, 0, 3, 2)])[0, 0])
    0.3333333333333333
    """
    if not first or not second:
        return np.zeros((len(first), len(second)))
    a = np.array([b.xyxy for b in first], dtype=np.float64)[:, None, :]
    b = np.array([b.xyxy for b in second], dtype=np.float64)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class BoxMatch:
    """Counts of one matching (add them up over images with ``+``)."""

    matched: int = 0
    truths: int = 0
    predictions: int = 0
    iou_sum: float = 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.truths if self.truths else float("nan")

    @property
    def precision(self) -> float:
        return self.matched / self.predictions if self.predictions else float("nan")

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs."""
        return self.iou_sum / self.matched if self.matched else float("nan")

    def __add__(self, other: "BoxMatch") -> "BoxMatch":
        return BoxMatch(self.matched + other.matched, self.truths + other.truths,
                        self.predictions + other.predictions, self.iou_sum + other.iou_sum)


def match_boxes(predicted: list[Box], truth: list[Box], iou_threshold: float = 0.5,
                class_aware: bool = True) -> BoxMatch:
    """Greedy one-to-one matching of predictions (highest score first) to ground truth."""
    result = BoxMatch(truths=len(truth), predictions=len(predicted))
    if not predicted or not truth:
        return result
    overlaps = iou_matrix(predicted, truth)
    if class_aware:
        same = (np.array([p.class_id for p in predicted])[:, None]
                == np.array([t.class_id for t in truth])[None, :])
        overlaps = np.where(same, overlaps, 0.0)
    taken = np.zeros(len(truth), dtype=bool)
    for index in np.argsort([-p.score for p in predicted], kind="stable"):
        candidates = np.where(taken, -1.0, overlaps[index])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken[best] = True
            result.matched += 1
            result.iou_sum += float(candidates[best])
    return result
