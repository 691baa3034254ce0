"""The train/val/test split of a YOLO set: by group, so a volume's slices share one split.

:func:`assign_splits` groups samples with :func:`sample_group` (a NIfTI file, or the
``<name>`` of ``<name>_z<index>`` stems), sorts the groups and permutes them with
``numpy.random.default_rng(seed)``; :func:`split_counts` gives each split its share.
Used by :mod:`medistill.boxes.yolo_dataset` (``Creat_yolodata.py``).
"""

from __future__ import annotations

import re

import numpy as np

from medistill.data import Sample
from medistill.errors import MedistillError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_GROUP_PATTERN = r"^(.+)_z\d+$"
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def check_fractions(fractions: tuple[float, ...]) -> None:
    """Three non-negative fractions summing to 1 with a positive train part."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise MedistillError(f"--split needs three fractions TRAIN VAL TEST, train > 0, none "
                             f"negative (e.g. 0.8 0.1 0.1), got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-3:
        raise MedistillError(f"--split fractions must sum to 1, got {list(fractions)} "
                             f"(sum {sum(fractions):g})")


def sample_group(sample: Sample, group_pattern: str = DEFAULT_GROUP_PATTERN) -> str:
    """The group a sample is split with: its volume, its stem's pattern match, or its stem.

    >>> from pathlib import Path
    >>> sample_group(Sample("brain_z012", Path("brain_z012.png")))
    'brain'
    >>> sample_group(Sample("brain_z012", Path("brain_z012.png")), group_pattern="")
    'brain_z012'
    """
    if sample.slice_index is not None:
        return f"volume:{sample.image_path}"
    if group_pattern:
        match = re.match(group_pattern, sample.stem)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return sample.stem


def split_counts(groups: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many groups go to train, val and test.

    Rounded from the fractions; a split with a positive fraction gets at least one group
    when there are enough groups (val from 2 groups on, test from 3), train always keeps
    one.

    >>> split_counts(10, (0.8, 0.1, 0.1)), split_counts(3, (0.8, 0.1, 0.1)), split_counts(1, (0.8, 0.1, 0.1))
    ((8, 1, 1), (1, 1, 1), (1, 0, 0))
    """
    val = int(round(groups * fractions[1]))
    test = int(round(groups * fractions[2]))
    if fractions[1] > 0 and groups >= 2:
        val = max(val, 1)
    if fractions[2] > 0 and groups >= 3:
        test = max(test, 1)
    while groups - val - test < 1 and (val or test):
        if test >= val and test:
            test -= 1
        else:
            val -= 1
    return groups - val - test, val, test


def assign_splits(
    samples: list[Sample],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
) -> dict[str, list[Sample]]:
    """``{"train": [...], "val": [...], "test": [...]}``, split by group, deterministic in ``seed``.

    The groups are sorted by name and permuted with ``numpy.random.default_rng(seed)``,
    so the result depends only on the group names, the fractions and the seed.
    """
    check_fractions(fractions)
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample_group(sample, group_pattern), []).append(sample)
    names = sorted(groups)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_train, n_val, _ = split_counts(len(names), fractions)
    chosen = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
              "test": order[n_train + n_val:]}
    return {split: sorted((s for g in chosen[split] for s in groups[g]), key=lambda s: s.stem)
            for split in SPLITS}
