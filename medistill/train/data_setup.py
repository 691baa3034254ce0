"""From a data-set folder to checked training and validation samples."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medistill.data import Sample, find_splits, load_sample, pair_folder, validate_samples
from medistill.data.samples import number_classes_together
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
    val_fraction: float = 0.2, seed: int = 0, skip_bad: bool = False, mask_pattern: str | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples of a data-set folder, validated.

    Uses ``train/`` and ``val/`` when the folder has them; otherwise holds out
    ``val_fraction`` of the images (by source file) for validation. ``mask_pattern``
    pairs several mask files per image (:mod:`medistill.data.mask_layout`); with
    ``{class}`` the classes are numbered over train/ and val/ together.
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
        samples = pair_folder(images, masks, mask_suffix=mask_suffix, mask_mode=mask_mode, problems=problems,
                              mask_pattern=mask_pattern)
        return validate_samples(samples, skip_bad=skip_bad, mask_mode=mask_mode, problems=problems)

    train = checked(train_key)
    if "val" in splits:
        train, val = number_classes_together(train, checked("val"))
    else:
        train, val = split_by_source(train, val_fraction, seed)
        if val_fraction > 0 and not val:
            log.warning("%s has only %d image(s) (or one source file): none can be held out for validation "
                        "(--val-fraction %g), so validation is off and the best epoch is chosen by the "
                        "training loss. Add images or a val/ folder for a meaningful run",
                        data_dir, len(train), val_fraction)
    log.info("data: %d training and %d validation images from %s", len(train), len(val), data_dir)
    return train, val


def config_samples(config: Any) -> tuple[list[Sample], list[Sample]]:
    """:func:`training_samples` with the data settings of a run's config (``TrainConfig`` and its kin)."""
    return training_samples(config.data, mask_suffix=config.mask_suffix, mask_mode=config.mask_mode,
                            val_fraction=config.val_fraction, seed=config.seed, skip_bad=config.skip_bad,
                            mask_pattern=config.mask_pattern)


def count_classes(samples: list[Sample], mask_mode: str = "auto") -> int:
    """Number of label classes, background included (2 for binary masks).

    With ``mask_mode="auto"``, label values with gaps (masks holding {0, 10}, say) are
    refused: read literally they would make an 11-class model with 9 classes that never
    occur. ``--mask-mode binary`` (foreground = any label) or ``--mask-mode labels`` (the
    values are the classes, as asked) decide. Masks that are all empty get a warning.
    """
    values: set[int] = set()
    first_with: dict[int, Path] = {}
    for sample in tqdm(samples, desc="scanning masks", unit="mask", leave=False):
        _, mask = load_sample(sample, mask_mode=mask_mode)
        if mask is not None and mask.size:
            for value in np.unique(mask).tolist():
                values.add(int(value))
                first_with.setdefault(int(value), Path(sample.mask_path or sample.image_path))
    foreground = sorted(v for v in values if v > 0)
    if not foreground:
        log.warning("every mask of the %d image(s) is empty (no foreground): the model can only learn "
                    "background and its Dice on any lesion will be 0. Check --mask_dir, --mask-suffix and "
                    "--mask-mode", len(samples))
        return 2
    missing = sorted(set(range(1, foreground[-1] + 1)) - set(foreground))
    if missing and mask_mode == "auto":
        raise DataError(
            f"the masks hold the label values {foreground} (e.g. {first_with[foreground[-1]]}) but not "
            f"{_listing(missing)}: read as classes they would make a {foreground[-1] + 1}-class model whose "
            f"classes {_listing(missing)} never occur. Pass --mask-mode binary for one foreground class "
            f"(any value > 0), or --mask-mode labels to train on the values as they are")
    if missing:
        log.warning("label values %s never occur in the masks (found %s): the model still has %d classes",
                    _listing(missing), foreground, foreground[-1] + 1)
    return max(2, foreground[-1] + 1)


def _listing(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:8]))
    return shown + (f" … ({len(values)} values)" if len(values) > 8 else "")
