"""One image's teacher targets in the student frame, the cache's features, and the boxes
file's entries (split, boxes as arrays); see :mod:`medistill.distill.meddistill.data`.

Example:

>>> import numpy as np
>>> soft_mask_to_frame(np.ones((2, 4), np.float32), Geometry.for_size(2, 4, 8), 8)[:, 0]
array([1., 1., 1., 1., 0., 0., 0., 0.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from medistill.boxes.boxes_file import BoxesFile, ImageBoxes, image_path
from medistill.data.preprocess import Geometry
from medistill.data.samples import Sample, load_sample_image
from medistill.errors import MedistillError
from medistill.teachers.cache import CacheReader
from medistill.train.data_setup import split_by_source


# --------------------------------------------------------------------------- one image


@dataclass
class TeacherTargets:
    """A teacher's outputs for one image at its original size (from the cache or live)."""

    fused: np.ndarray                 # (H, W) float32 soft mask, max over the boxes
    uncertainty: float                # σ², mean over the boxes (0 without boxes)
    boxes: np.ndarray                 # (N, 4) float32 clipped xyxy, original pixels
    features: np.ndarray | None       # (h, w, C) teacher features or None
    feature_stride: int | None
    masks: np.ndarray | None = None   # (N, H, W) per-box soft masks (None: not read)


def soft_mask_to_frame(soft: np.ndarray, geometry: Geometry, size: int) -> np.ndarray:
    """``(H, W)`` soft mask → ``(size, size)`` float32 in the student frame, padding 0.

    The same resampling as the image (area when shrinking, bilinear when enlarging);
    never nearest neighbour, so soft values stay soft.

    >>> geometry = Geometry.for_size(2, 4, 8)
    >>> soft_mask_to_frame(np.ones((2, 4), np.float32), geometry, 8).sum(axis=1).tolist()
    [8.0, 8.0, 8.0, 8.0, 0.0, 0.0, 0.0, 0.0]
    """
    soft = np.asarray(soft, np.float32)
    if soft.shape != (geometry.height, geometry.width):
        raise MedistillError(f"soft mask of shape {soft.shape} does not match its image "
                             f"({geometry.height}, {geometry.width}); rebuild the teacher cache")
    interpolation = cv2.INTER_AREA if geometry.scale < 1.0 else cv2.INTER_LINEAR
    size_hw = (geometry.resized_height, geometry.resized_width)
    resized = soft if soft.shape == size_hw else cv2.resize(soft, size_hw[::-1], interpolation=interpolation)
    out = np.zeros((size, size), np.float32)
    out[: size_hw[0], : size_hw[1]] = np.clip(resized, 0.0, 1.0)
    return out


def features_to_grid(features: np.ndarray, grid: int) -> np.ndarray:
    """Teacher features ``(h, w, C)`` over its padded square → ``(grid, grid, C)`` float16.

    The whole map is resized (area averaging when shrinking, bilinear when enlarging,
    pixel centres aligned), since the student's padded square is the same square.
    """
    features = np.asarray(features, np.float32)
    if features.ndim != 3:
        raise MedistillError(f"teacher features must be (h, w, C), got shape {features.shape}")
    if features.shape[:2] == (grid, grid):
        return features.astype(np.float16)
    method = "area" if grid < max(features.shape[:2]) else "bilinear"
    resized = tf.image.resize(features[None], (grid, grid), method=method)[0]
    return np.asarray(resized, np.float32).astype(np.float16)


def targets_from_output(out) -> TeacherTargets:
    """A :class:`~medistill.teachers.base.TeacherOutput` → :class:`TeacherTargets`."""
    return TeacherTargets(out.fused(), out.image_uncertainty(), out.boxes, out.features, out.feature_stride,
                          out.masks)


# --------------------------------------------------------------------------- the cache


def read_cached(cache: CacheReader, stem: str, masks: bool = False) -> TeacherTargets:
    """One image's :class:`TeacherTargets` from an open teacher cache (``masks``: with the per-box masks)."""
    entry = cache.entry(stem)
    return TeacherTargets(entry.fused, entry.image_uncertainty, entry.boxes, entry.features, entry.feature_stride,
                          cache.masks(stem) if masks and entry.n_boxes else None)


@dataclass(frozen=True)
class FeatureInfo:
    """The teacher's feature map: ``(h, w, C)`` and its stride in the teacher's input frame."""

    shape: tuple[int, int, int]
    stride: int

    @property
    def channels(self) -> int:
        return self.shape[2]


def cache_feature_info(cache_path: str | Path, stems: Sequence[str]) -> FeatureInfo | None:
    """The features every listed image has in the cache, or None when none has any.

    Raises :class:`MedistillError` when some images have features and others not, or
    when their shapes differ.
    """
    with CacheReader(cache_path) as cache:
        shapes = {cache.feature_info(stem) for stem in stems}
    if shapes == {None}:
        return None
    if None in shapes or len(shapes) != 1:
        raise MedistillError(f"{cache_path}: the images' teacher features differ in presence or shape "
                             f"({sorted(map(str, shapes))}); rebuild the cache with one teacher (--overwrite)")
    shape, stride = shapes.pop()
    return FeatureInfo(tuple(int(v) for v in shape), stride)


# --------------------------------------------------------------------------- splits


def entry_sample(entry: ImageBoxes, image_dir: str | Path) -> Sample:
    """The data-layer sample of a boxes-file entry (a file, or a slice of a volume)."""
    return Sample(entry.stem, image_path(image_dir, entry), None, entry.slice_index)


def read_entry_image(entry: ImageBoxes, image_dir: str | Path) -> np.ndarray:
    """The raw image of a boxes-file entry, ``float32 (H, W, C)``."""
    return load_sample_image(entry_sample(entry, image_dir))


def split_entries(boxes: BoxesFile, image_dir: str | Path, val_fraction: float,
                  seed: int) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    """Training and validation entries: about ``val_fraction`` held out, by source file, seeded.

    The entries are sorted by stem first, so the split depends only on the data.
    """
    entries = sorted(boxes.images, key=lambda e: e.stem)
    samples = [entry_sample(e, image_dir) for e in entries]
    by_stem = {e.stem: e for e in entries}
    train, val = split_by_source(samples, val_fraction, seed)
    return [by_stem[s.stem] for s in train], [by_stem[s.stem] for s in val]


def drop_empty(entries: list[ImageBoxes]) -> list[ImageBoxes]:
    """The entries with at least one box (``--skip-empty``)."""
    kept = [e for e in entries if e.boxes]
    if not kept:
        raise MedistillError("every training image has no box: nothing to learn from with --skip-empty "
                             "(check the boxes file, or drop --skip-empty to train on negatives)")
    return kept


def entry_xyxy(entry: ImageBoxes) -> np.ndarray:
    """``(N, 4)`` float32 boxes of an entry, clipped to its image."""
    xyxy = np.array([b.xyxy for b in entry.boxes], np.float32).reshape(-1, 4)
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, entry.width)
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, entry.height)
    return xyxy


def pad_rasters(rasters: Sequence[tuple[np.ndarray, np.ndarray]], scores: Sequence[np.ndarray],
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``(rows, cols)`` indicators and box scores → ``(N, M, S)``, ``(N, M, S)``, ``(N, M)``.

    ``M`` is the most boxes of any image (at least 1); padding boxes have weight 0.
    """
    most = max([len(r) for r, _ in rasters] + [1])
    rows = np.zeros((len(rasters), most, size), np.uint8)
    cols = np.zeros_like(rows)
    weights = np.zeros((len(rasters), most), np.float32)
    for i, ((r, c), s) in enumerate(zip(rasters, scores)):
        rows[i, : len(r)], cols[i, : len(c)], weights[i, : len(s)] = r, c, s
    return rows, cols, weights
