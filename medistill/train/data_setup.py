"""From a data-set folder to checked training and validation samples."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medistill.data import Sample, find_splits, load_sample, pair_folder, validate_samples
from medistill.errors import DataError, DataProblem

log = logging.getLogger("medistill.train")


def split_by_source(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of the samples, never splitting one source file.

    The slices of one NIfTI volume share a source file, so they land on one side only.
    """
    if fraction <= 0 or not samples:
        return list(samples), []
    groups: dict[Path, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[Path(sample.image_path)].append(sample)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    wanted = max(1, round(fraction * len(samples)))
    held: list[Sample] = []
    for key in keys:
        if len(held) >= wanted or len(held) + len(groups[key]) > len(samples) - 1:
            continue
        held.extend(groups[key])
    held_set = set(held)
    return [s for s in samples if s not in held_set], held


def training_samples(
    data_dir: str | Path, *, mask_suffix: str = "", mask_mode: str = "auto",
    val_fraction: float = 0.2, seed: int = 0, skip_bad: bool = False,
) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples of a data-set folder, validated.

    Uses ``train/`` and ``val/`` when the folder has them; otherwise holds out
    ``val_fraction`` of the images (by source file) for validation.
    """
    splits = find_splits(data_dir)
    train_key = "train" if "train" in splits else "all" if "all" in splits else None
    if train_key is None:
        raise DataError(f"{data_dir} has no training images (expected images/ and masks/, or train/images and train/masks)")

    def checked(key: str) -> list[Sample]:
        images, masks = splits[key]
        if masks is None:
            raise DataError(f"{images.parent}: no masks/ folder next to images/; supervised training needs masks")
        problems: list[DataProblem] = []
        samples = pair_folder(images, masks, mask_suffix=mask_suffix, mask_mode=mask_mode, problems=problems)
        return validate_samples(samples, skip_bad=skip_bad, mask_mode=mask_mode, problems=problems)

    train = checked(train_key)
    if "val" in splits:
        val = checked("val")
    else:
        train, val = split_by_source(train, val_fraction, seed)
    log.info("data: %d training and %d validation images from %s", len(train), len(val), data_dir)
    return train, val


def count_classes(samples: list[Sample], mask_mode: str = "auto") -> int:
    """Number of label classes, background included (2 for binary masks)."""
    highest = 0
    for sample in tqdm(samples, desc="scanning masks", unit="mask", leave=False):
        _, mask = load_sample(sample, mask_mode=mask_mode)
        if mask is not None and mask.size:
            highest = max(highest, int(np.max(mask)))
    return max(2, highest + 1)
