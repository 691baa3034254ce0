"""Pseudo-label quality: label-free numbers that describe each teacher mask.

For every box of an image the cache records a :class:`MaskQuality`:

* ``score`` — the teacher's own IoU prediction (SAM, LiteMedSAM); NaN when it has none;
* ``stability`` — the mean IoU between the binarised mask from the box and the masks
  from the same box jittered ``draws`` times by up to ``jitter`` of its width/height
  per edge (seeded per image stem, so a resumed cache gets the same draws);
* ``fill`` — binarised mask pixels inside the box / pixels of the box;
* ``components`` — 8-connected components of the binarised mask (whole image);
* ``area`` — binarised mask pixels (whole image).

Binarised means ``soft > threshold`` (0.5). Everything here is plain NumPy/OpenCV; the
teacher calls that produce the jittered masks live in :mod:`medistill.teachers.cache`
(through :meth:`medistill.teachers.base.Teacher.predict_more`).

Example::

    settings = QualitySettings(jitter=0.05, draws=3)
    jittered = jitter_boxes(out.boxes, settings.jitter, settings.draws, rng, height, width)
    more = teacher.predict_more(image, jittered.reshape(-1, 4), out)
    records = mask_quality(out.masks, out.boxes, out.scores,
                           stability(out.masks, more.masks.reshape(settings.draws, *out.masks.shape)))
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from medistill.errors import MedistillError

QUALITY_FIELDS = ("score", "stability", "fill", "components", "area")


@dataclass(frozen=True)
class QualitySettings:
    """How the quality records are computed (recorded in the cache's provenance).

    ``jitter``: largest move of each box edge, as a fraction of the box width/height,
    in ``[0, 0.5)``; ``draws``: jittered boxes per box (0 turns stability off: NaN);
    ``seed``: combined with the image stem; ``threshold``: binarisation of soft masks.
    """

    jitter: float = 0.05
    draws: int = 3
    seed: int = 0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.jitter) < 0.5:
            raise MedistillError(f"quality jitter is a fraction of the box size in [0, 0.5), got {self.jitter}")
        if int(self.draws) < 0:
            raise MedistillError(f"quality draws must be >= 0, got {self.draws}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise MedistillError(f"quality threshold must be in (0, 1), got {self.threshold}")

    def to_json(self) -> str:
        """Canonical JSON (the cache's ``quality`` root attribute)."""
        return json.dumps({"jitter": float(self.jitter), "draws": int(self.draws), "seed": int(self.seed),
                           "threshold": float(self.threshold)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QualitySettings:
        """Read :meth:`to_json` output."""
        data = json.loads(text)
        return cls(float(data["jitter"]), int(data["draws"]), int(data["seed"]), float(data["threshold"]))


@dataclass(frozen=True)
class MaskQuality:
    """The quality record of one teacher mask (see the module docstring)."""

    score: float
    stability: float
    fill: float
    components: int
    area: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binarise(masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Soft masks → bool masks ``soft > threshold``.

    >>> binarise(np.array([0.2, 0.5, 0.7])).tolist()
    [False, False, True]
    """
    return np.asarray(masks) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1.0 when both are empty (as everywhere in medistill).

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> iou(a, b), iou(a & False, b & False)
    (0.3333333333333333, 1.0)
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def stem_seed(stem: str, seed: int = 0) -> list[int]:
    """A seed for ``np.random.default_rng`` from an image stem and a base seed (order-free).

    >>> stem_seed("case7") == stem_seed("case7") != stem_seed("case8")
    True
    """
    return [int(seed), zlib.crc32(str(stem).encode("utf-8"))]


def jitter_boxes(boxes: np.ndarray, jitter: float, draws: int, rng: np.random.Generator | Any,
                 height: int, width: int) -> np.ndarray:
    """``(N, 4)`` xyxy boxes → ``(draws, N, 4)`` float32 jittered copies, inside the image.

    Every edge moves by ``uniform(-jitter, jitter)`` times the box width (x) or height
    (y); the result is clipped to ``[0, W] × [0, H]``. With ``jitter < 0.5`` a box inside
    the image keeps a positive area. ``rng`` is a generator or anything
    ``np.random.default_rng`` takes.

    >>> j = jitter_boxes(np.array([[10, 10, 30, 20]]), 0.05, 2, 0, 64, 64)
    >>> j.shape, bool(np.all(np.abs(j - [10, 10, 30, 20]) <= [1, 0.5, 1, 0.5]))
    ((2, 1, 4), True)
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    moves = rng.uniform(-1.0, 1.0, (int(draws),) + boxes.shape) * float(jitter) * size
    out = boxes[None] + moves
    out[..., [0, 2]] = np.clip(out[..., [0, 2]], 0, width)
    out[..., [1, 3]] = np.clip(out[..., [1, 3]], 0, height)
    return out.astype(np.float32)


def stability(masks: np.ndarray, jittered: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean IoU of each mask with its jittered-box masks: ``(N, H, W)``, ``(D, N, H, W)`` → ``(N,)``.

    NaN for every mask when ``D = 0`` (stability not computed).

    >>> m = np.zeros((1, 4, 4)); m[0, :2] = 1
    >>> j = np.stack([m, np.roll(m, 1, axis=1)])
    >>> [round(float(v), 3) for v in stability(m, j)]  # IoU 1 and 1/3
    [0.667]
    """
    masks, jittered = binarise(masks, threshold), binarise(jittered, threshold)
    if jittered.ndim != 4 or jittered.shape[1:] != masks.shape:
        raise MedistillError(f"jittered masks must be (draws, {', '.join(map(str, masks.shape))}), "
                             f"got {jittered.shape}")
    if jittered.shape[0] == 0:
        return np.full((len(masks),), np.nan, np.float32)
    return np.array([np.mean([iou(mask, draw[i]) for draw in jittered]) for i, mask in enumerate(masks)],
                    np.float32)


def box_pixels(box: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose centres lie in a pixel-edge xyxy box (at least one).

    >>> box_pixels(np.array([3, 1, 8, 2.4]), 10, 10)
    (slice(1, 2, None), slice(3, 8, None))
    """
    x1, y1, x2, y2 = (float(v) for v in box)

    def span(low: float, high: float, size: int) -> slice:
        first, last = math.floor(low + 0.5), math.floor(high + 0.5)
        if last <= first:  # no pixel centre inside: the pixel holding the middle
            first = min(max(int(math.floor((low + high) / 2)), 0), size - 1)
            last = first + 1
        return slice(max(first, 0), min(last, size))

    return span(y1, y2, height), span(x1, x2, width)


def fill_ratio(mask: np.ndarray, box: np.ndarray) -> float:
    """Foreground pixels of a bool ``(H, W)`` mask inside ``box`` / pixels of the box.

    >>> m = np.zeros((10, 10), bool); m[2:4, 2:4] = True
    >>> fill_ratio(m, np.array([2, 2, 6, 6]))
    0.25
    """
    rows, cols = box_pixels(box, *mask.shape)
    inside = np.asarray(mask, bool)[rows, cols]
    return float(np.count_nonzero(inside) / max(inside.size, 1))


def component_count(mask: np.ndarray) -> int:
    """8-connected components of a bool ``(H, W)`` mask.

    >>> m = np.zeros((6, 6), bool); m[0, 0] = m[1, 1] = m[4, 4] = True
    >>> component_count(m)
    2
    """
    count, _ = cv2.connectedComponents(np.asarray(mask, np.uint8), connectivity=8)
    return int(count) - 1


def mask_quality(masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None,
                 stabilities: np.ndarray | None, threshold: float = 0.5) -> list[MaskQuality]:
    """The :class:`MaskQuality` of each of ``N`` soft masks ``(N, H, W)`` with its box.

    ``scores`` (teacher IoU predictions) and ``stabilities`` may be None (NaN records).

    >>> m = np.zeros((1, 8, 8), np.float32); m[0, 2:4, 2:6] = 0.9
    >>> mask_quality(m, np.array([[2, 2, 6, 6]]), None, np.array([1.0]))[0]
    MaskQuality(score=nan, stability=1.0, fill=0.5, components=1, area=8)
    """
    masks = np.asarray(masks)
    hard = binarise(masks, threshold)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) != len(masks):
        raise MedistillError(f"{len(masks)} masks but {len(boxes)} boxes")
    records = []
    for i, mask in enumerate(hard):
        score = float("nan") if scores is None else float(scores[i])
        stable = float("nan") if stabilities is None else float(stabilities[i])
        records.append(MaskQuality(score, stable, fill_ratio(mask, boxes[i]), component_count(mask),
                                   int(np.count_nonzero(mask))))
    return records


def records_to_arrays(records: list[MaskQuality]) -> dict[str, np.ndarray]:
    """Records → one array per field (float32 score/stability/fill, int32 components, int64 area)."""
    dtypes = {"score": np.float32, "stability": np.float32, "fill": np.float32,
              "components": np.int32, "area": np.int64}
    return {name: np.array([getattr(r, name) for r in records], dtypes[name]).reshape(-1)
            for name in QUALITY_FIELDS}


def arrays_to_records(arrays: dict[str, np.ndarray]) -> list[MaskQuality]:
    """The inverse of :func:`records_to_arrays`."""
    n = len(arrays["area"])
    return [MaskQuality(float(arrays["score"][i]), float(arrays["stability"][i]), float(arrays["fill"][i]),
                        int(arrays["components"][i]), int(arrays["area"][i])) for i in range(n)]
