"""MedDistill's data: teacher outputs and images, brought into the student's frame.

Every image of the boxes file becomes one training example in the *student frame*:
the image preprocessed with :func:`medistill.data.preprocess_image` (MedDistill's
preprocessing: grey, per-image min-max, longest side to ``S``, zero padding at the
bottom and right), and the teacher's outputs mapped into the same ``S × S`` square:

- the soft mask ``S`` (the teacher's pixel-wise max over the boxes, stored at the
  original size) is resized with the image's own interpolation (area when shrinking,
  bilinear when enlarging, pixel centres aligned), clipped to [0, 1] and zero padded
  exactly like the image (:func:`soft_mask_to_frame`);
- the image uncertainty σ² (mean over the boxes of each soft mask's variance) as cached;
- the teacher's encoder features ``F_t``, when it has them, resized as a whole to the
  grid of the chosen student feature (:func:`features_to_grid`). This is exact because
  both frames are built the same way: the teacher (LiteMedSAM, SAM) also scales the
  longest side to its input size and pads at the bottom and right, so its feature map
  covers the same padded square as the student input; resizing the whole teacher map
  onto the whole student map keeps every feature over the pixels it describes (up to
  the rounding of the resized side, under half a pixel of either frame; the test
  ``test_features_land_on_the_student_grid`` checks it on a hand-made map);
- for ``--co-learn``: the cached LiteMedSAM embeddings at their own ``64 × 64``
  resolution and the boxes in LiteMedSAM's 256 frame (scaled and truncated as the
  teacher did), padded to ``M`` = the most boxes of any image, with a ``valid`` mask.

Images without a box are negatives (all-zero soft mask, σ² = 0) unless ``skip_empty``
drops them from the training set (the released behaviour). The train/validation split
(:func:`split_entries`) is by source file, seeded, and made before ``skip_empty`` so the
held-out images are the same whatever that setting. Features are kept as float16.

Example::

    train, val = split_entries(read_boxes("boxes.json"), "data/images", 0.2, seed=0)
    data = load_from_cache("teacher.h5", "data/images", train, PreprocessConfig(size=64), grid=16)
    dataset = training_dataset(data, batch=8, epoch=0, seed=0, augment=True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from medistill.boxes.boxes_file import ImageBoxes
from medistill.data.preprocess import Geometry, PreprocessConfig, preprocess_image
from medistill.distill.colearn import boxes_in_teacher_frame, pad_boxes
from medistill.distill.meddistill.frames import (  # noqa: F401  (re-exported: MedDistill's data API)
    FeatureInfo,
    TeacherTargets,
    cache_feature_info,
    drop_empty,
    entry_sample,
    entry_xyxy,
    features_to_grid,
    pad_rasters,
    read_cached,
    read_entry_image,
    soft_mask_to_frame,
    split_entries,
    targets_from_output,
)
from medistill.distill.meddistill.tight_boxes import tighten_boxes
from medistill.errors import MedistillError
from medistill.losses.label_free import inside_boxes, rasterise_boxes
from medistill.teachers.base import Teacher
from medistill.teachers.cache import CacheReader

log = logging.getLogger("medistill.distill")


# --------------------------------------------------------------------------- arrays


@dataclass
class DistillData:
    """The examples of one split, in the student frame (see the module docstring)."""

    stems: list[str]
    images: np.ndarray                          # (N, S, S, C) float32
    geometries: list[Geometry]
    soft: np.ndarray                            # (N, S, S) float32
    uncertainty: np.ndarray                     # (N,) float32
    n_boxes: np.ndarray                         # (N,) int32
    features: np.ndarray | None = None          # (N, g, g, C) float16
    embeddings: np.ndarray | None = None        # (N, 64, 64, 256) float16 (co-learn)
    boxes: np.ndarray | None = None             # (N, M, 4) float32, teacher frame (co-learn)
    valid: np.ndarray | None = None             # (N, M) bool (co-learn)
    raw: list[np.ndarray] = field(default_factory=list)        # original images (live teacher)
    raw_boxes: list[np.ndarray] = field(default_factory=list)  # original boxes (live teacher)
    box_rows: np.ndarray | None = None          # (N, M, S) uint8, rows each box covers (student frame)
    box_cols: np.ndarray | None = None          # (N, M, S) uint8, columns each box covers
    box_weights: np.ndarray | None = None       # (N, M) float32 detector scores, 0 for padding
    proj_rows: np.ndarray | None = None         # (N, M, S) the projection term's boxes (None: box_rows)
    proj_cols: np.ndarray | None = None
    weights: np.ndarray | None = None           # (N,) float32 per-image trust (negatives rule, quality control)

    def __len__(self) -> int:
        return len(self.stems)

    @property
    def negatives(self) -> int:
        return int(np.sum(self.n_boxes == 0))

    def image_weights(self) -> np.ndarray:
        """``(N,)`` float32 trust of each example (1 where nothing lowered it)."""
        return np.ones(len(self), np.float32) if self.weights is None else self.weights

    def projection_boxes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(M, S)`` row and column indicators of the projection term's boxes of example ``index``."""
        if self.proj_rows is None:
            return self.box_rows[index], self.box_cols[index]
        return self.proj_rows[index], self.proj_cols[index]

    def inside(self, index: int) -> np.ndarray:
        """``(S, S)`` uint8: 1 inside some box of example ``index``."""
        return inside_boxes(self.box_rows[index], self.box_cols[index])

    def content_mask(self) -> np.ndarray:
        """``(N, S, S)`` float32: 1 over each image, 0 over its padding."""
        size = self.images.shape[1]
        mask = np.zeros((len(self), size, size), np.float32)
        for i, g in enumerate(self.geometries):
            mask[i, : g.resized_height, : g.resized_width] = 1.0
        return mask


def assemble(entries: Sequence[ImageBoxes], image_dir: str | Path, pre: PreprocessConfig,
             targets: Callable[[int, np.ndarray], TeacherTargets | None], *, grid: int | None,
             co_learn: bool = False, keep_raw: bool = False, tighten: bool = False,
             desc: str = "distillation data") -> DistillData:
    """Read, preprocess and bring into the student frame every entry's image and targets.

    ``targets(i, image)`` gives entry ``i``'s teacher outputs (None in live-teacher mode
    for the training set, whose targets are made at every step). ``grid`` is the side of
    the student feature map the teacher features are resized to (None: no feature term).
    ``tighten``: the projection term's boxes are tightened to the teacher's per-box masks
    (:mod:`~medistill.distill.meddistill.tight_boxes`) where the targets carry them.
    """
    if not entries:
        raise MedistillError("no images to distil on: the boxes file lists none for this split")
    images, geometries, soft, sigma2, n_boxes, feats, embeds, boxes_256 = [], [], [], [], [], [], [], []
    raw, raw_boxes, rasters, proj_rasters, scores = [], [], [], [], []
    for i, entry in enumerate(tqdm(entries, desc=desc, unit="image", leave=False)):
        image = read_entry_image(entry, image_dir)
        x, geometry = preprocess_image(image, pre)
        images.append(x)
        geometries.append(geometry)
        n_boxes.append(len(entry.boxes))
        xyxy = entry_xyxy(entry)
        rasters.append(rasterise_boxes(xyxy, geometry.scale, pre.size))
        scores.append(np.array([b.score for b in entry.boxes], np.float32))
        if keep_raw:
            raw.append(image)
            raw_boxes.append(np.array([b.xyxy for b in entry.boxes], np.float32).reshape(-1, 4))
        found = targets(i, image)
        if tighten:
            if found is not None and found.masks is not None and len(found.masks) == len(xyxy):
                xyxy = tighten_boxes(xyxy, found.masks)[0]
            proj_rasters.append(rasterise_boxes(xyxy, geometry.scale, pre.size))
        if found is None:
            continue
        soft.append(soft_mask_to_frame(found.fused, geometry, pre.size))
        sigma2.append(found.uncertainty)
        if grid is not None:
            if found.features is None:
                raise MedistillError(f"image {entry.stem!r} has no teacher features but others have; "
                                     "rebuild the teacher cache (--overwrite)")
            feats.append(features_to_grid(found.features, grid))
        if co_learn:
            if found.features is None:
                raise MedistillError(f"image {entry.stem!r} has no cached embedding; --co-learn needs a "
                                     "LiteMedSAM teacher cache (with features)")
            embeds.append(np.asarray(found.features, np.float16))
            boxes_256.append(boxes_in_teacher_frame(found.boxes, geometry.height, geometry.width))
    size = pre.size
    data = DistillData(
        stems=[e.stem for e in entries], images=np.stack(images), geometries=geometries,
        soft=np.stack(soft) if soft else np.zeros((len(entries), size, size), np.float32),
        uncertainty=np.asarray(sigma2 if soft else np.zeros(len(entries)), np.float32),
        n_boxes=np.asarray(n_boxes, np.int32), features=np.stack(feats) if feats else None,
        raw=raw, raw_boxes=raw_boxes)
    data.box_rows, data.box_cols, data.box_weights = pad_rasters(rasters, scores, size)
    if tighten:
        data.proj_rows, data.proj_cols, _ = pad_rasters(proj_rasters, scores, size)
    if co_learn:
        data.embeddings = np.stack(embeds)
        data.boxes, data.valid = pad_boxes(boxes_256)
    return data


def load_from_cache(cache_path: str | Path, image_dir: str | Path, entries: Sequence[ImageBoxes],
                    pre: PreprocessConfig, *, grid: int | None, co_learn: bool = False,
                    tighten: bool = False, desc: str = "reading teacher cache") -> DistillData:
    """:func:`assemble` with the targets read from the teacher cache."""
    with CacheReader(cache_path) as cache:
        return assemble(entries, image_dir, pre, lambda i, _: read_cached(cache, entries[i].stem, tighten),
                        grid=grid, co_learn=co_learn, tighten=tighten, desc=desc)


def load_live(teacher: Teacher, image_dir: str | Path, entries: Sequence[ImageBoxes],
              pre: PreprocessConfig, *, grid: int | None, call_teacher: bool,
              desc: str = "reading images") -> DistillData:
    """:func:`assemble` for live-teacher mode: raw images and boxes kept in memory.

    With ``call_teacher`` (the validation split) the teacher runs once per image now;
    otherwise (the training split) the targets are made at every step by
    :func:`live_targets`.
    """
    def targets(i: int, image: np.ndarray) -> TeacherTargets | None:
        if not call_teacher:
            return None
        xyxy = np.array([b.xyxy for b in entries[i].boxes], np.float32).reshape(-1, 4)
        return targets_from_output(teacher.predict(image, xyxy))

    return assemble(entries, image_dir, pre, targets, grid=grid, keep_raw=True, desc=desc)


def live_targets(teacher: Teacher, data: DistillData, index: int, size: int,
                 grid: int | None) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Call the teacher on training image ``index``: ``(soft (S, S), σ², features (g, g, C) | None)``."""
    found = targets_from_output(teacher.predict(data.raw[index], data.raw_boxes[index]))
    soft = soft_mask_to_frame(found.fused, data.geometries[index], size)
    features = features_to_grid(found.features, grid) if grid is not None else None
    return soft, found.uncertainty, features


# --------------------------------------------------------------------------- tf.data


def epoch_plan(count: int, epoch: int, seed: int, shuffle: bool, augment: bool,
               passes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The order of the examples and their flips ``(passes·N, 2)`` (left-right, up-down) for one epoch.

    Drawn from ``(seed, epoch)`` only, so a resumed run sees exactly the epochs that an
    uninterrupted one would, and every worker of a multi-worker run the same plan. A
    small set makes an epoch of several ``passes`` (each its own permutation and flips),
    so that an epoch is enough optimizer steps to judge (``--min-steps-per-epoch``).
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    orders, all_flips = [], []
    for _ in range(max(1, int(passes))):
        orders.append(rng.permutation(count) if shuffle else np.arange(count))
        all_flips.append(rng.random((count, 2)) < 0.5 if augment else np.zeros((count, 2), bool))
    return np.concatenate(orders).astype(np.int64), np.concatenate(all_flips)


def flip_maps(array: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Flip an ``(H, W, ...)`` map left-right (``flips[0]``) and up-down (``flips[1]``)."""
    if flips[0]:
        array = array[:, ::-1]
    if flips[1]:
        array = array[::-1]
    return np.ascontiguousarray(array)


def element_keys(feature_shape: tuple | None, co_learn: bool) -> list[str]:
    """The keys of one training example, in the order :func:`training_dataset` yields them."""
    keys = ["image", "soft", "uncertainty", "flip", "rows", "cols", "box_weights", "inside", "weight"]
    if feature_shape is not None:
        keys.append("features")
    if co_learn:
        keys += ["embeddings", "boxes", "valid"]
    return keys


def training_dataset(data: DistillData, batch: int, epoch: int, seed: int, augment: bool, *,
                     shuffle: bool = True, drop_remainder: bool = True,
                     feature_shape: tuple[int, int, int] | None = None,
                     live: Callable[[int], tuple] | None = None, passes: int = 1) -> tf.data.Dataset:
    """One epoch of batches, each a dict: ``image (B, S, S, C)``, ``soft (B, S, S)``,
    ``uncertainty (B,)``, ``flip (B, 2)`` bool, the boxes as ``rows`` / ``cols``
    ``(B, M, S)`` uint8 indicators with ``box_weights (B, M)``, ``inside (B, S, S)`` uint8
    (the union of the boxes), ``weight (B,)`` (the example's trust); ``features
    (B, g, g, C)`` float16 when ``feature_shape`` is ``(g, g, C)``; ``embeddings`` /
    ``boxes`` / ``valid`` when ``data`` holds co-learn inputs.

    Flips (``augment``) move the image, the soft mask, the box indicators and the
    features identically; the co-learn inputs stay unflipped (the step flips the
    decoder's output with ``flip``). ``passes`` (see :func:`epoch_plan`) repeats the set.
    ``live(index) -> (soft, σ², features)`` replaces the cached targets by a teacher call
    (live-teacher mode). Examples are read through ``tf.numpy_function`` from the arrays
    of ``data`` as they are when the epoch runs, so refreshed targets are seen.
    """
    order, flips = epoch_plan(len(data), epoch, seed, shuffle, augment, passes)
    keys = element_keys(feature_shape, data.embeddings is not None)
    size, channels = data.images.shape[1], data.images.shape[3]
    most = data.box_rows.shape[1]
    trust = data.image_weights()
    shapes = {"image": (size, size, channels), "soft": (size, size), "uncertainty": (), "flip": (2,),
              "rows": (most, size), "cols": (most, size), "box_weights": (most,), "inside": (size, size),
              "weight": (), "features": feature_shape}
    dtypes = {"image": tf.float32, "soft": tf.float32, "uncertainty": tf.float32, "flip": tf.bool,
              "rows": tf.uint8, "cols": tf.uint8, "box_weights": tf.float32, "inside": tf.uint8,
              "weight": tf.float32, "features": tf.float16, "embeddings": tf.float16, "boxes": tf.float32,
              "valid": tf.bool}
    if data.embeddings is not None:
        shapes.update(embeddings=data.embeddings.shape[1:], boxes=data.boxes.shape[1:], valid=data.valid.shape[1:])

    def load(index: np.int64, flip: np.ndarray) -> list[np.ndarray]:
        i = int(index)
        if live is not None:
            soft, sigma2, features = live(i)
        else:
            soft, sigma2 = data.soft[i], data.uncertainty[i]
            features = data.features[i] if data.features is not None else None
        rows, cols = data.projection_boxes(i)
        values = {"image": flip_maps(data.images[i], flip), "soft": flip_maps(soft, flip),
                  "uncertainty": np.float32(sigma2), "flip": np.asarray(flip, bool),
                  "rows": rows[:, ::-1] if flip[1] else rows, "cols": cols[:, ::-1] if flip[0] else cols,
                  "box_weights": data.box_weights[i], "inside": flip_maps(data.inside(i), flip),
                  "weight": trust[i]}
        if "features" in keys:
            values["features"] = flip_maps(features, flip)
        if "embeddings" in keys:
            values.update(embeddings=data.embeddings[i], boxes=data.boxes[i], valid=data.valid[i])
        return [np.asarray(values[k], dtypes[k].as_numpy_dtype) for k in keys]

    def element(index: tf.Tensor, flip: tf.Tensor) -> dict[str, tf.Tensor]:
        values = tf.numpy_function(load, [index, flip], [dtypes[k] for k in keys], name="distill_example")
        for key, value in zip(keys, values):
            value.set_shape(shapes[key])
        return dict(zip(keys, values))

    parallel = 1 if live is not None else tf.data.AUTOTUNE  # a teacher is called one image at a time
    dataset = tf.data.Dataset.from_tensor_slices((order, flips))
    dataset = dataset.map(element, num_parallel_calls=parallel, deterministic=True)
    return dataset.batch(batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def validation_batches(data: DistillData, batch: int):
    """``(images (b, S, S, C), soft (b, S, S))`` over a split, in order, for validation."""
    for start in range(0, len(data), batch):
        yield data.images[start:start + batch], data.soft[start:start + batch]
