"""Oracle boxes: the boxes file made from ground-truth masks (``detection.py boxes-from-masks``).

Distilling from oracle boxes instead of detector boxes separates the detector's errors
from the distillation's. ``jitter`` imitates an imperfect detector: each edge of a box
moves by a uniform random amount of up to ``jitter`` times the box's width (x edges)
or height (y edges); the box is then clipped to the image and kept at least one pixel
wide and high. The draws follow the samples sorted by stem, so a seed gives the same
file every time.

>>> import numpy as np
>>> box = Box(10, 10, 20, 30)
>>> jitter_box(box, 0.0, np.random.default_rng(0), 64, 64) == box
True
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes
from medistill.boxes.components import class_names_for, mask_to_boxes
from medistill.data import Sample, load_sample, pair_folder, validate_samples
from medistill.data.mask_layout import class_names_of
from medistill.data.samples import load_sample_mask
from medistill.errors import DataProblem, MedistillError


def jitter_box(box: Box, fraction: float, rng: np.random.Generator, width: int,
               height: int) -> Box:
    """``box`` with every edge moved by up to ``fraction`` of the box size, inside the image."""
    if fraction <= 0:
        return box
    dx, dy = fraction * box.width, fraction * box.height
    x1, x2 = sorted(float(v) for v in (box.x1 + rng.uniform(-dx, dx), box.x2 + rng.uniform(-dx, dx)))
    y1, y2 = sorted(float(v) for v in (box.y1 + rng.uniform(-dy, dy), box.y2 + rng.uniform(-dy, dy)))
    x1, x2 = _at_least_one_pixel(x1, x2, width)
    y1, y2 = _at_least_one_pixel(y1, y2, height)
    return replace(box, x1=x1, y1=y1, x2=x2, y2=y2)


def _at_least_one_pixel(low: float, high: float, size: int) -> tuple[float, float]:
    low, high = min(max(low, 0.0), size), min(max(high, 0.0), size)
    if high - low < 1.0:
        centre = min(max((low + high) / 2, 0.5), size - 0.5)
        low, high = centre - 0.5, centre + 0.5
    return low, high


def boxes_from_masks(
    mask_dir: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    mask_suffix: str = "",
    mask_mode: str = "auto",
    min_area: int = 1,
    one_box: bool = False,
    jitter: float = 0.0,
    seed: int = 0,
    class_names: list[str] | None = None,
    skip_bad: bool = False,
    mask_pattern: str | None = None,
) -> BoxesFile:
    """A :class:`BoxesFile` of ground-truth boxes (score 1.0) for every mask.

    With ``image_dir`` the masks are paired with their images and the entries name
    the image files; without it they name the mask files (the stems are the same).
    ``mask_pattern`` (with ``image_dir``) merges several mask files per image
    (:mod:`medistill.data.mask_layout`); its class names are the default names.
    """
    if not 0.0 <= jitter < 1.0:
        raise MedistillError(f"--jitter is a fraction of the box size in [0, 1), got {jitter}")
    if mask_pattern and image_dir is None:
        raise MedistillError("--mask-pattern needs --image_dir (the pattern finds each image's masks)")
    samples = _mask_samples(mask_dir, image_dir, mask_suffix, mask_mode, skip_bad, mask_pattern)
    rng = np.random.default_rng(seed)
    entries = []
    for sample in tqdm(samples, desc="boxes from masks", unit="mask"):
        mask = load_sample_mask(sample, mask_mode) if image_dir is None else load_sample(
            sample, mask_mode)[1]
        height, width = mask.shape
        boxes = [jitter_box(box, jitter, rng, width, height)
                 for box in mask_to_boxes(mask, min_area=min_area, one_box=one_box)]
        entries.append(ImageBoxes.for_sample(sample, width, height, boxes))
    num_classes = max((b.class_id for e in entries for b in e.boxes), default=0) + 1
    source = {"kind": "masks", "mask_dir": str(mask_dir), "min_area": min_area,
              "one_box": one_box, "jitter": jitter, "seed": seed}
    class_names = class_names or class_names_of([sample.mask_parts for sample in samples]) or None
    return BoxesFile(class_names=class_names_for(class_names, num_classes), images=entries,
                     source=source)


def _mask_samples(mask_dir, image_dir, mask_suffix, mask_mode, skip_bad, mask_pattern=None) -> list[Sample]:
    problems: list[DataProblem] = []
    if image_dir is not None:
        samples = pair_folder(image_dir, mask_dir, mask_suffix=mask_suffix, mask_mode=mask_mode,
                              problems=problems, mask_pattern=mask_pattern)
    else:
        # The mask files are listed as if they were images, then read as masks.
        listed = pair_folder(mask_dir, problems=problems)
        samples = [replace(s, mask_path=s.image_path) for s in listed]
    return validate_samples(samples, skip_bad=skip_bad, mask_mode=mask_mode, problems=problems)
