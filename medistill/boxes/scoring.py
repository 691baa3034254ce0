"""A boxes file scored against ground truth, and the detector's score threshold chosen from it.

A detector trained briefly ranks boxes well but gives them low scores, so its default
threshold (conf 0.25) keeps few of them. :func:`choose_confidence` picks the threshold
on a labelled split instead: it predicts once with a low threshold, then keeps the
candidate threshold with the best F1 of box recall and box precision (IoU >= 0.5, one
prediction per ground-truth box, same class). Of equal F1 it takes the middle of the
tied thresholds (the lower middle of an even count): a flat F1 over a range of
thresholds says the few validation boxes cannot tell them apart, and the middle is the
choice least tied to those few boxes.

How much a threshold can be trusted depends on how many images and ground-truth boxes
decided it: :func:`sample_warning` says so below :data:`MIN_IMAGES` images or
:data:`MIN_BOXES` boxes.

>>> from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes
>>> found = BoxesFile(["lesion"], [ImageBoxes("a.png", "a", 64, 64, [
...     Box(0, 0, 10, 10, score=0.6), Box(30, 30, 40, 40, score=0.1)])])
>>> truth = {"a": [Box(0, 0, 10, 10)]}
>>> match_by_stem(found, truth).recall
1.0
>>> choose_confidence(found, truth, candidates=(0.05, 0.3)).conf
0.3
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medistill.boxes.boxes_file import Box, BoxesFile
from medistill.boxes.components import mask_to_boxes
from medistill.boxes.metrics import BoxMatch, match_boxes
from medistill.errors import MedistillError

DEFAULT_CONFIDENCES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 19))  # 0.05..0.9
# Below these, one box more or less moves the F1 by several points: the choice is a guess.
MIN_IMAGES = 10
MIN_BOXES = 20


def truth_boxes(masks: Mapping[str, np.ndarray], min_area: int = 1) -> dict[str, list[Box]]:
    """``{stem: boxes}``: one box per connected component of each mask (as ``Creat_yolodata.py``)."""
    return {stem: mask_to_boxes(mask, min_area=min_area) for stem, mask in masks.items()}


def match_by_stem(detected: BoxesFile, truth: Mapping[str, list[Box]], conf: float = 0.0,
                  iou: float = 0.5, require_all: bool = True) -> BoxMatch:
    """Box matching summed over the images of ``detected``; boxes scoring below ``conf`` dropped.

    Every image of ``detected`` must have ground truth. With ``require_all`` every
    ground-truth image must also be in ``detected`` (a test set is measured whole).
    """
    found = detected.by_stem()
    unknown = sorted(set(found) - set(truth))
    if unknown:
        raise MedistillError(f"the boxes file names {len(unknown)} image(s) without a ground-truth mask "
                             f"(first: {unknown[0]!r}); pass the masks of the images it was made from")
    missing = sorted(set(truth) - set(found))
    if require_all and missing:
        raise MedistillError(f"the boxes file has no entry for {len(missing)} image(s) with a mask "
                             f"(first: {missing[0]!r}); run detection.py predict on those images")
    total = BoxMatch()
    for stem, entry in found.items():
        kept = [box for box in entry.boxes if box.score >= conf]
        total = total + match_boxes(kept, truth[stem], iou_threshold=iou)
    return total


@dataclass(frozen=True)
class ConfidencePoint:
    """Box recall, precision and F1 of the boxes scoring at least ``conf``."""

    conf: float
    recall: float
    precision: float
    matched: int
    truths: int
    predictions: int

    @property
    def f1(self) -> float:
        if self.matched == 0:
            return 0.0
        return 2 * self.recall * self.precision / (self.recall + self.precision)


def confidence_curve(detected: BoxesFile, truth: Mapping[str, list[Box]],
                     candidates: Sequence[float] = DEFAULT_CONFIDENCES,
                     iou: float = 0.5) -> list[ConfidencePoint]:
    """One :class:`ConfidencePoint` per candidate threshold, in increasing order.

    Only the images of ``detected`` count (a validation split of a labelled folder).
    """
    if not candidates or not all(0.0 <= c <= 1.0 for c in candidates):
        raise MedistillError(f"candidate confidences must be numbers in [0, 1], got {list(candidates)}")
    lowest = detected.source.get("conf")
    if isinstance(lowest, (int, float)) and min(candidates) < lowest:
        raise MedistillError(f"the boxes file was predicted with conf {lowest}, above the lowest candidate "
                             f"{min(candidates)}; predict again with --conf {min(candidates)} or lower")
    points = []
    for conf in sorted(set(float(c) for c in candidates)):
        match = match_by_stem(detected, truth, conf=conf, iou=iou, require_all=False)
        points.append(ConfidencePoint(conf, match.recall, match.precision, match.matched,
                                      match.truths, match.predictions))
    return points


def best_point(points: Sequence[ConfidencePoint]) -> ConfidencePoint:
    """The point with the best box F1; of equals, the middle threshold (lower middle of an even count).

    >>> flat = [ConfidencePoint(c, 1.0, 1.0, 4, 4, 4) for c in (0.05, 0.1, 0.15, 0.2, 0.25)]
    >>> best_point(flat).conf
    0.15
    """
    if not points or points[0].truths == 0:
        raise MedistillError("the images of the boxes file have no ground-truth object: a threshold "
                             "cannot be chosen from them; use a labelled split with objects")
    best = max(round(point.f1, 12) for point in points)
    tied = sorted((point for point in points if round(point.f1, 12) == best), key=lambda point: point.conf)
    return tied[(len(tied) - 1) // 2]


def sample_warning(images: int, boxes: int) -> str | None:
    """A warning when ``images`` images with ``boxes`` ground-truth boxes are too few to choose from."""
    if images >= MIN_IMAGES and boxes >= MIN_BOXES:
        return None
    return (f"the threshold was chosen on only {images} image(s) with {boxes} ground-truth box(es) "
            f"(fewer than {MIN_IMAGES} images or {MIN_BOXES} boxes): one box more or less moves its F1 "
            "by several points, so treat it as a guess. Choose it on more labelled images (raise the val "
            "fraction of Creat_yolodata.py --split, or predict on more labelled images)")


def choose_confidence(detected: BoxesFile, truth: Mapping[str, list[Box]],
                      candidates: Sequence[float] = DEFAULT_CONFIDENCES,
                      iou: float = 0.5) -> ConfidencePoint:
    """The candidate threshold with the best box F1 (the middle of equals)."""
    return best_point(confidence_curve(detected, truth, candidates, iou))


def format_curve(points: Sequence[ConfidencePoint], chosen: float | None = None) -> str:
    """The curve as a small text table; ``*`` marks the chosen threshold."""
    lines = ["  conf  recall  precision     F1  boxes kept"]
    for p in points:
        mark = "*" if chosen is not None and math.isclose(p.conf, chosen) else " "
        precision = "-" if math.isnan(p.precision) else f"{p.precision:.3f}"
        lines.append(f"{mark} {p.conf:4.2f}  {p.recall:6.3f}  {precision:>9}  {p.f1:5.3f}  {p.predictions:10d}")
    return "\n".join(lines)
