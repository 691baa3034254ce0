"""From a student's probability map to the teacher's next prompts (refinement rounds).

After a refinement round (:mod:`medistill.distill.meddistill.rounds`) the student's
probability map of each image, at the image's original resolution, is turned into box
prompts for the teacher and merged with the detector's boxes of that image. Everything
here is plain numpy (and OpenCV's connected components); ``docs/refinement_rounds.md``
explains the rules in the user's terms.

**Student boxes** (:func:`student_boxes`): the 8-connected components of
``prob > threshold``; components under the minimum area
(:meth:`PromptRule.min_pixels`: ``max(min_area, min_area_fraction · H · W)`` pixels) are
dropped as specks. Each component gives its tight box in pixel-edge coordinates (columns
3..7 → ``x1 = 3, x2 = 8``, see :mod:`medistill.boxes.boxes_file`), its pixel count and a
score, the mean student probability over the component.

**The merge rule** (:func:`merge_prompts`), per image:

1. Each student box is widened by a margin (``margin_fraction`` of its side, at least
   ``margin_pixels``, each way, clipped to the image). A box-prompted foundation model
   segments what lies inside its box; a box cut exactly at a student's 0.5 contour cuts
   off whatever the student missed, and feeding that back round after round would shrink
   the targets. The margin gives the teacher the room a detector box gives it.
2. Detector and student boxes are matched one to one, greedily by IoU (highest first),
   when the IoU is at least ``match_iou``. The IoU of a pair is the larger of the
   detector box's IoU with the student's tight box and with its widened box: a tight
   detector box (boxes from masks) matches the tight box, a loose one the widened box;
   on a small object the margin alone would otherwise push the IoU under the threshold.
3. A matched detector box is **replaced** by the widened student box (class of the
   detector box, score the larger of the two). We replace rather than take the union
   (which can only grow, so a loose detector box could never become tight) or the
   intersection (which can only shrink, the feedback loop the margin avoids): the
   student, trained on every image, localises the object better than one detector box,
   and the IoU threshold bounds how far it may move the prompt.
4. An unmatched detector box is **kept**: the detector saw something the student missed,
   and the student is not trusted to veto it.
5. An unmatched student box is **added** only when the student is confident: score at
   least ``add_score`` and area at least ``add_area_factor`` times the minimum area. This
   is how images the detector missed get boxes. It is not added when it lies mostly
   (``inside_fraction`` of its tight box's area) inside a detector box (a piece of an
   object that is already prompted), nor when it matches (IoU ``match_iou``, as in 2.) a
   box the teacher has
   **rejected** before (:func:`teacher_rejects`: the teacher's mask at an added box had
   fewer than the minimum area of pixels above 0.5), so one student mistake is not
   proposed again in every round. Added boxes take class 0 (the student is binary).
   With ``add=False`` nothing is added (the rounds pass it for boxes made from
   ground-truth masks, which list every object: an extra box could only be wrong).

Only boxes: LiteMedSAM, as used here, takes box prompts only, so positive and negative
points are not made.

Example:

>>> prob = np.zeros((20, 20), np.float32)
>>> prob[4:8, 5:10] = 0.9
>>> rule = PromptRule(min_area=4, margin_pixels=1, margin_fraction=0.0)
>>> found = student_boxes(prob, rule)
>>> found[0].box.xyxy, found[0].area, round(found[0].score, 2)
([5.0, 4.0, 10.0, 8.0], 20, 0.9)
>>> merged = merge_prompts([Box(3, 2, 12, 10, score=0.6)], found, 20, 20, rule)
>>> merged.boxes[0].xyxy, merged.origins
([4.0, 3.0, 11.0, 9.0], ['replaced'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from medistill.boxes.boxes_file import Box
from medistill.errors import MedistillError

# What became of each box of a merge (MergeResult.origins) and of each student candidate.
ORIGINS = ("replaced", "kept", "added")
SKIPPED = ("inside", "rejected", "unconfident", "not_allowed")


@dataclass(frozen=True)
class PromptRule:
    """The settings of :func:`student_boxes` and :func:`merge_prompts` (see the module docstring)."""

    threshold: float = 0.5          # student probability above which a pixel is foreground
    min_area: int = 9               # pixels: smaller components are specks ...
    min_area_fraction: float = 0.0005  # ... or smaller than this fraction of the image
    margin_fraction: float = 0.1    # a student box is widened by this fraction of its side ...
    margin_pixels: float = 2.0      # ... and by at least this many pixels, each way
    match_iou: float = 0.5          # a student box this close to a detector box replaces it
    add_score: float = 0.8          # an unmatched student box is added when its mean probability ...
    add_area_factor: float = 2.0    # ... and its area (x the minimum area) are at least these
    inside_fraction: float = 0.5    # unmatched and this much inside a detector box: not added

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.threshold < 1.0, "threshold must lie in (0, 1)"),
            (self.min_area >= 1, "min_area must be at least 1 pixel"),
            (0.0 <= self.min_area_fraction < 1.0, "min_area_fraction must lie in [0, 1)"),
            (self.margin_fraction >= 0.0 and self.margin_pixels >= 0.0, "the margins must be 0 or more"),
            (0.0 < self.match_iou <= 1.0, "match_iou must lie in (0, 1]"),
            (0.0 <= self.add_score <= 1.0, "add_score must lie in [0, 1]"),
            (self.add_area_factor >= 1.0, "add_area_factor must be at least 1"),
            (0.0 < self.inside_fraction <= 1.0, "inside_fraction must lie in (0, 1]"),
        ]
        bad = [message for ok, message in checks if not ok]
        if bad:
            raise MedistillError(f"prompt rule: {'; '.join(bad)} (got {asdict(self)})")

    def min_pixels(self, height: int, width: int) -> int:
        """The minimum component area in pixels for an ``height × width`` image."""
        return max(int(self.min_area), int(math.ceil(self.min_area_fraction * height * width)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptRule:
        """The rule of a dictionary (as :meth:`to_dict` wrote it); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedistillError(f"prompt rule: unknown setting(s) {unknown}; the settings are {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class StudentBox:
    """One component of the student's mask: its tight box, pixel count and mean probability."""

    box: Box
    area: int
    score: float


@dataclass
class MergeResult:
    """The merged prompts of one image and what became of every box.

    ``boxes[i]`` came about as ``origins[i]`` (``replaced`` / ``kept`` / ``added``);
    ``skipped`` counts the student boxes not used, by reason (``inside`` a detector box,
    matching a ``rejected`` box, ``unconfident``).
    """

    boxes: list[Box]
    origins: list[str]
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIPPED, 0))

    def count(self, origin: str) -> int:
        return sum(1 for o in self.origins if o == origin)

    @property
    def added(self) -> list[int]:
        """Indices of the boxes that the student added."""
        return [i for i, o in enumerate(self.origins) if o == "added"]


# --------------------------------------------------------------------------- student boxes


def student_boxes(prob: np.ndarray, rule: PromptRule = PromptRule()) -> list[StudentBox]:
    """Tight boxes of the student's components, top to bottom then left to right.

    ``prob`` is the student's ``(H, W)`` foreground probability at the image's original
    resolution (a ``(H, W, K)`` softmax map is reduced to ``1 − P(background)``).
    """
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 3:
        prob = 1.0 - prob[..., 0]
    if prob.ndim != 2:
        raise MedistillError(f"a student probability map must be (H, W) or (H, W, K), got shape {prob.shape}")
    if not np.all(np.isfinite(prob)):
        raise MedistillError("the student's probability map holds NaN or infinite values; "
                             "the round's student is broken (see its history.csv)")
    height, width = prob.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (prob > rule.threshold).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if count <= 1:
        return []
    smallest = rule.min_pixels(height, width)
    sums = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=count)
    found = []
    for index in range(1, count):
        left, top, w, h, area = (int(v) for v in stats[index])
        if area < smallest:
            continue
        box = Box(float(left), float(top), float(left + w), float(top + h), score=float(sums[index] / area))
        found.append(StudentBox(box, area, float(sums[index] / area)))
    found.sort(key=lambda s: (s.box.y1, s.box.x1))
    return found


def widen(box: Box, rule: PromptRule, width: int, height: int) -> Box:
    """``box`` widened by the rule's margin on every side, clipped to the image."""
    mx = max(rule.margin_pixels, rule.margin_fraction * box.width)
    my = max(rule.margin_pixels, rule.margin_fraction * box.height)
    return Box(max(0.0, box.x1 - mx), max(0.0, box.y1 - my), min(float(width), box.x2 + mx),
               min(float(height), box.y2 + my), score=box.score, class_id=box.class_id)


# --------------------------------------------------------------------------- geometry


def _xyxy(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    if isinstance(boxes, np.ndarray):
        return boxes.astype(np.float64).reshape(-1, 4)
    return np.array([b.xyxy for b in boxes], np.float64).reshape(-1, 4)


def intersection_matrix(a: Sequence[Box] | np.ndarray, b: Sequence[Box] | np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection areas of two box lists (pixel-edge xyxy)."""
    a, b = _xyxy(a), _xyxy(b)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: Sequence[Box] | np.ndarray, b: Sequence[Box] | np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of two box lists; 0 where both boxes are empty.

    >>> iou_matrix([Box(0, 0, 2, 2)], [Box(1, 0, 3, 2), Box(5, 5, 6, 6)]).round(3).tolist()
    [[0.333, 0.0]]
    """
    inter = intersection_matrix(a, b)
    union = _areas(_xyxy(a))[:, None] + _areas(_xyxy(b))[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_matches(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one ``(row, column)`` pairs, highest IoU first, each at least ``threshold``."""
    pairs = []
    used_rows, used_cols = set(), set()
    order = np.argsort(-iou, axis=None, kind="stable")
    for flat in order:
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] < threshold:
            break
        if r in used_rows or c in used_cols:
            continue
        pairs.append((int(r), int(c)))
        used_rows.add(r)
        used_cols.add(c)
    return pairs


# --------------------------------------------------------------------------- the merge


def merge_prompts(detector: Sequence[Box], student: Sequence[StudentBox], width: int, height: int,
                  rule: PromptRule = PromptRule(), rejected: Sequence[Box] = (), add: bool = True) -> MergeResult:
    """The merged prompts of one ``width × height`` image (rule in the module docstring).

    ``detector``: the detector's boxes of the image; ``student``: :func:`student_boxes`
    of the student's map; ``rejected``: boxes the teacher rejected in earlier rounds;
    ``add``: whether unmatched student boxes may be added at all.
    The result lists the detector's boxes in their order (replaced or kept), then the
    added ones.
    """
    detector = list(detector)
    tight = [s.box for s in student]
    widened = [widen(box, rule, width, height) for box in tight]

    def iou(boxes: Sequence[Box]) -> np.ndarray:  # (len(boxes), len(student)): tight or widened, the better
        return np.maximum(iou_matrix(boxes, tight), iou_matrix(boxes, widened))

    pairs = greedy_matches(iou(detector), rule.match_iou) if detector and student else []
    partner = dict(pairs)
    boxes, origins = [], []
    for d, box in enumerate(detector):
        if d in partner:
            s = partner[d]
            w = widened[s]
            boxes.append(Box(w.x1, w.y1, w.x2, w.y2, score=max(box.score, student[s].score),
                             class_id=box.class_id))
            origins.append("replaced")
        else:
            boxes.append(box)
            origins.append("kept")
    result = MergeResult(boxes, origins)
    matched = set(partner.values())
    unmatched = [s for s in range(len(student)) if s not in matched]
    if not unmatched:
        return result
    smallest = rule.min_pixels(height, width) * rule.add_area_factor
    inside = (intersection_matrix(tight, detector).max(axis=1) / np.maximum(_areas(_xyxy(tight)), 1e-9)
              if detector else np.zeros(len(student)))
    blocked = (iou(list(rejected)).max(axis=0) >= rule.match_iou if len(rejected) else np.zeros(len(student), bool))
    for s in unmatched:
        if inside[s] >= rule.inside_fraction:
            result.skipped["inside"] += 1
        elif blocked[s]:
            result.skipped["rejected"] += 1
        elif not add:
            result.skipped["not_allowed"] += 1
        elif student[s].score >= rule.add_score and student[s].area >= smallest:
            w = widened[s]
            result.boxes.append(Box(w.x1, w.y1, w.x2, w.y2, score=float(min(1.0, student[s].score)), class_id=0))
            result.origins.append("added")
        else:
            result.skipped["unconfident"] += 1
    return result


def teacher_rejects(masks: np.ndarray, height: int, width: int, rule: PromptRule = PromptRule()) -> np.ndarray:
    """``(N,)`` bool: the teacher's soft mask at box ``i`` has fewer than the minimum area above 0.5.

    ``masks`` is the teacher's ``(N, H, W)`` per-box soft masks (as the teacher cache holds them).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise MedistillError(f"teacher masks must be (N, H, W), got shape {masks.shape}")
    if len(masks) == 0:
        return np.zeros(0, bool)
    return (masks > 0.5).reshape(len(masks), -1).sum(axis=1) < rule.min_pixels(height, width)


def is_confirmed_negative(detector: Sequence[Box], merged: MergeResult) -> bool:
    """An image is a confirmed negative when neither the detector nor the student gives it a box,
    and the student sees nothing there that it is unsure of.

    Every student component of such an image (if any) was rejected by the teacher before;
    an image with an unconfident student component stays ambiguous (the trainer down-weights it).
    """
    return not detector and not merged.boxes and merged.skipped["unconfident"] == 0
