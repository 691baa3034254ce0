"""Check a list of samples before training: every problem reported at once.

:func:`validate_samples` reads every image and mask once and collects unreadable
files, image/mask size mismatches and masks whose values do not look like a mask.
It raises one ``DataError`` listing every problem (pairing problems passed in with
``problems=`` included), or with ``skip_bad=True`` logs a warning per problem on the
``"medistill.data"`` logger and returns the good samples. An all-background mask is a
valid negative example, not a problem.
"""

from __future__ import annotations

import logging

import numpy as np

from medistill.data.io import DEFAULT_MAX_LABEL, UnreadableFileError, binary_threshold
from medistill.data.samples import Sample, load_mask_and_values, load_sample_image
from medistill.errors import DataError, DataProblem, problems_error

logger = logging.getLogger("medistill.data")

# A mask read by thresholding should be nearly all near-black or near-white; a grey
# photograph put in the mask folder is not. Limits are for 8-bit, scaled for 16-bit.
MID_GREY_LOW, MID_GREY_HIGH = 30, 225
MID_GREY_MAX_FRACTION = 0.05


def validate_samples(
    samples: list[Sample],
    skip_bad: bool = False,
    mask_mode: str = "auto",
    max_label: int = DEFAULT_MAX_LABEL,
    problems: list[DataProblem] | None = None,
) -> list[Sample]:
    """The samples whose files are usable; see the module docstring for the reporting."""
    found = list(problems or [])
    if not samples and not found:
        raise DataError("no samples to check: the data set is empty (check the image folder "
                        "and that file names have a known extension)")
    good = []
    for sample in samples:
        sample_problems = check_sample(sample, mask_mode, max_label)
        found.extend(sample_problems)
        if not sample_problems:
            good.append(sample)
    if found and not skip_bad:
        raise problems_error(found, f"{len(found)} problem(s) in the data set; fix them, or "
                             "skip the bad files (skip_bad / --skip-bad):")
    for problem in found:
        logger.warning("leaving out %s", problem)
    if not good:
        raise problems_error(found, "no usable sample is left after leaving out the bad "
                             "files:") if found else DataError("no usable sample")
    return good


def check_sample(
    sample: Sample, mask_mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> list[DataProblem]:
    """Every problem of one sample (empty list when it is usable)."""
    image, problems = _try(lambda: load_sample_image(sample), sample.image_path)
    if sample.mask_path is None:
        return problems
    loaded, mask_problems = _try(lambda: load_mask_and_values(sample, mask_mode, max_label),
                                 sample.mask_path)
    problems += mask_problems
    if loaded is None:
        return problems
    values, mask = loaded
    where = _slice_note(sample)
    if image is not None and image.shape[:2] != mask.shape:
        problems.append(DataProblem(
            sample.mask_path, f"{where}mask is {_size(mask.shape)} but its image "
            f"{sample.image_path} is {_size(image.shape)}",
            "resize the mask to the image size or fix the pairing"))
    problems += _value_problems(sample, values, mask, mask_mode, max_label, where)
    return problems


def _value_problems(
    sample: Sample,
    values: np.ndarray,
    mask: np.ndarray,
    mask_mode: str,
    max_label: int,
    where: str,
) -> list[DataProblem]:
    """Masks whose values suggest a photograph, an unseen encoding or too many labels."""
    problems = []
    if mask.size and mask.max() > max_label and not sample.mask_parts:  # pattern labels are class numbers
        problems.append(DataProblem(
            sample.mask_path, f"{where}label values up to {mask.max()} exceed "
            f"max_label={max_label}", "save a binary mask (0 and 255) or renumber the labels"))
    thresholded = (mask_mode != "labels" and np.issubdtype(values.dtype, np.integer)
                   and values.size and values.max() > max_label)
    if not thresholded:
        return problems
    threshold = binary_threshold(values)
    scale = (threshold + 1) / 128  # 1 for 8-bit, 256 for 16-bit ranges
    mid = (values > MID_GREY_LOW * scale) & (values < MID_GREY_HIGH * scale)
    if mid.mean() > MID_GREY_MAX_FRACTION:
        problems.append(DataProblem(
            sample.mask_path, f"{where}{mid.mean():.0%} of the pixels are mid-grey, so this "
            "looks like a photograph, not a mask", "put masks (0 background, 255 or small "
            "labels foreground) in the mask folder"))
    elif not mask.any():
        problems.append(DataProblem(
            sample.mask_path, f"{where}non-zero values up to {values.max()} but none above "
            f"the {values.dtype} foreground threshold {threshold}, so the mask would be all "
            "background", "save 0/255 8-bit or 0/65535 16-bit masks, or read label maps "
            "with mask_mode='labels'"))
    return problems


def _try(load, path) -> tuple[object | None, list[DataProblem]]:
    """Run a loader; a ``DataError`` becomes a problem instead of an exception."""
    try:
        return load(), []
    except UnreadableFileError as error:
        return None, [error.problem]
    except DataError as error:
        return None, [DataProblem(path, str(error))]


def _slice_note(sample: Sample) -> str:
    if sample.slice_index is None:
        return ""
    return f"slice {sample.slice_index} (axis {sample.slice_axis}): "


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}×{shape[1]}"
