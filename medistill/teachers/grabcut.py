"""GrabCut as a teacher: OpenCV's box-initialised graph cut, no learned weights.

Per box: the image (min-max scaled to 8 bits, grey replicated to 3 channels) is cut with
``cv2.grabCut`` initialised from the box (``iterations`` rounds); pixels labelled
(probably) foreground form the hard mask. GrabCut gives no probabilities, so the soft
mask is a documented proxy: the hard mask smoothed with a Gaussian of
``sigma = max(1, 0.02 * box diagonal)`` pixels, set to 0 outside the box. The
uncertainty is then, as for every teacher, the variance of that soft mask over its
pixels. A box too small for GrabCut (under 2 pixels on a side) or one that leaves no
background to model (it covers the whole image) falls back to the filled box; such boxes
are listed in ``extras["fallback"]``. No scores, no features. GrabCut has no image
encoder to reuse, so ``predict_more`` (the cache's jittered boxes) cuts each new box
from scratch (the default of :class:`~medistill.teachers.base.Teacher`).

Example::

    out = GrabCutTeacher().predict(image, np.array([[10, 10, 50, 40]]))
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from medistill.teachers.base import Teacher, TeacherOutput, mask_uncertainty


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` raw intensities → ``(H, W, 3)`` uint8, min-max scaled over the image."""
    pixels = np.asarray(image, np.float64)
    low, high = pixels.min(), pixels.max()
    scaled = np.zeros_like(pixels) if high <= low else (pixels - low) / (high - low) * 255.0
    scaled = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(scaled, 3, axis=2) if scaled.shape[2] == 1 else scaled


class GrabCutTeacher(Teacher):
    """Box-prompted GrabCut (OpenCV)."""

    name = "grabcut"
    weights_hash = ""

    def __init__(self, iterations: int = 5, seed: int = 0) -> None:
        self.iterations = int(iterations)
        self.seed = int(seed)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"image": "min-max to uint8, grey replicated to RGB", "iterations": self.iterations,
                "soft_mask": "Gaussian-smoothed hard mask, sigma = max(1, 0.02 * box diagonal), 0 outside box"}

    def _one_box(self, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, bool]:
        height, width = rgb.shape[:2]
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        inside = np.zeros((height, width), np.float32)
        inside[y1:y2, x1:x2] = 1.0
        covers_all = x1 <= 0 and y1 <= 0 and x2 >= width and y2 >= height
        if x2 - x1 < 2 or y2 - y1 < 2 or covers_all:
            return inside, True
        mask = np.zeros((height, width), np.uint8)
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        try:
            cv2.grabCut(rgb, mask, (x1, y1, x2 - x1, y2 - y1), background, foreground,
                        self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            return inside, True
        hard = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        sigma = max(1.0, 0.02 * float(np.hypot(x2 - x1, y2 - y1)))
        soft = cv2.GaussianBlur(hard, (0, 0), sigmaX=sigma, sigmaY=sigma) * inside
        return np.clip(soft, 0.0, 1.0).astype(np.float32), False

    def _predict(self, image: np.ndarray, boxes: np.ndarray) -> TeacherOutput:
        rgb = to_uint8_rgb(image)
        masks = np.zeros((len(boxes),) + rgb.shape[:2], np.float32)
        fallback = []
        for i, box in enumerate(boxes):
            masks[i], used_fallback = self._one_box(rgb, box)
            if used_fallback:
                fallback.append(i)
        return TeacherOutput(masks=masks, uncertainties=mask_uncertainty(masks), scores=None,
                             features=None, feature_stride=None, boxes=boxes,
                             extras={"fallback": fallback})
