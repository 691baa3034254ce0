"""Samples: one 2-D example each, paired by file stem, never by position.

* :func:`pair_folder` lists an image folder (and optionally a mask folder) and pairs
  files by stem: ``a.jpg`` pairs with ``a.png``, ``a.nii.gz`` with ``a.nii``; with
  ``mask_suffix="_mask"`` the mask of ``a.png`` is ``a_mask.*``. NIfTI volumes
  expand into one sample per slice named ``<stem>_z<index>`` (at least 3 digits).
* Pairing problems (image without mask, mask without image, two files with one
  stem, a volume paired with a 2-D file, volumes of different shapes) are collected.
  Without ``problems=`` they are raised together as one ``DataError``; with
  ``problems=some_list`` they are appended to that list, the affected files are left
  out and pairing goes on, so :func:`medistill.data.validation.validate_samples` can
  report them together with the problems it finds when reading the files.
* Missing or empty folders always raise ``DataError`` at once.
* With ``mask_pattern`` (:mod:`medistill.data.mask_layout`) an image may have several
  mask files, one per structure; they are listed in ``Sample.mask_parts`` and merged
  into one label map when the mask is loaded (``mask_path`` is the first of them).
* A data-set folder's splits (:func:`~medistill.data.folders.find_splits`) are read in
  :mod:`medistill.data.folders`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medistill.data.folders import EXTENSION_LIST, existing_folder, find_splits, image_files_in
from medistill.data.io import (
    DEFAULT_MAX_LABEL,
    UnreadableFileError,
    is_volume_file,
    mask_from_values,
    read_image,
    read_mask_values,
    read_mask_volume,
    read_volume,
    strip_extension,
    volume_shape,
    volume_slice,
)
from medistill.data.mask_layout import (
    MaskPart,
    MaskPattern,
    class_names_of,
    merge_mask_parts,
    renumber_parts,
)
from medistill.errors import DataError, DataProblem, problems_error

# find_splits lives in medistill.data.folders; imported here too, so
# `from medistill.data.samples import find_splits` keeps working.
__all__ = ["Sample", "find_splits", "load_mask_and_values", "load_sample", "load_sample_image",
           "load_sample_mask", "number_classes_together", "pair_folder"]


@dataclass(frozen=True)
class Sample:
    """One 2-D example: a whole image file, or slice ``slice_index`` of a NIfTI volume."""

    stem: str
    image_path: Path
    mask_path: Path | None = None
    slice_index: int | None = None
    slice_axis: int = 2
    mask_parts: tuple[MaskPart, ...] = ()  # several mask files (a mask pattern), merged on loading

    def describe(self) -> str:
        """The image file, with the slice for volume samples (for messages)."""
        if self.slice_index is None:
            return str(self.image_path)
        return f"{self.image_path} slice {self.slice_index} (axis {self.slice_axis})"


# --------------------------------------------------------------------------- loading


def load_sample(
    sample: Sample, mask_mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image float32 (H, W, C), mask int32 (H, W) or None)`` for one sample."""
    image = load_sample_image(sample)
    if sample.mask_path is None:
        return image, None
    return image, load_sample_mask(sample, mask_mode, max_label)


def load_sample_image(sample: Sample) -> np.ndarray:
    """The sample's image, ``float32 (H, W, C)``; volume slices have ``C = 1``."""
    if sample.slice_index is None:
        return read_image(sample.image_path)
    _require_volume(sample.image_path, sample)
    plane = volume_slice(read_volume(sample.image_path), sample.slice_index, sample.slice_axis)
    return plane[..., np.newaxis].astype(np.float32)


def load_sample_mask(
    sample: Sample, mask_mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> np.ndarray:
    """The sample's mask, ``int32 (H, W)``; raises ``DataError`` when it has none."""
    return load_mask_and_values(sample, mask_mode, max_label)[1]


def load_mask_and_values(
    sample: Sample, mask_mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> tuple[np.ndarray, np.ndarray]:
    """``(grey values as stored, mask after the mask rule)`` for the sample's mask.

    For a volume slice the rule is decided on the whole mask volume.
    """
    if sample.mask_path is None:
        raise DataError(f"{sample.describe()} has no mask (give a mask folder)")
    if sample.mask_parts:
        merged = merge_mask_parts(sample.mask_parts)
        return merged, merged
    if sample.slice_index is None:
        values = read_mask_values(sample.mask_path)
        return values, mask_from_values(values, mask_mode, max_label, sample.mask_path)
    _require_volume(sample.mask_path, sample)
    index, axis = sample.slice_index, sample.slice_axis
    values = volume_slice(read_volume(sample.mask_path), index, axis)
    mask = volume_slice(read_mask_volume(sample.mask_path, mask_mode, max_label), index, axis)
    return values, mask


def _require_volume(path: Path, sample: Sample) -> None:
    if not is_volume_file(path):
        raise UnreadableFileError(path, f"sample {sample.stem} names slice "
                                  f"{sample.slice_index} of a file that is not a NIfTI volume",
                                  "drop slice_index for 2-D files")


# --------------------------------------------------------------------------- pairing


def pair_folder(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    mask_suffix: str = "",
    nifti_axis: int = 2,
    keep_empty_slices: bool = True,
    mask_mode: str = "auto",
    max_label: int = DEFAULT_MAX_LABEL,
    problems: list[DataProblem] | None = None,
    mask_pattern: str | None = None,
) -> list[Sample]:
    """Pair images with masks by stem; samples sorted by stem.

    ``keep_empty_slices=False`` drops volume slices whose mask slice is all
    background. ``mask_pattern`` finds several mask files per image
    (:mod:`medistill.data.mask_layout`; not with ``mask_suffix``). See the module
    docstring for how problems are reported.
    """
    if nifti_axis not in (0, 1, 2):
        raise DataError(f"nifti_axis must be 0, 1 or 2, got {nifti_axis}")
    image_dir = existing_folder(image_dir, "image")
    found: list[DataProblem] = []
    parts: dict[str, tuple[MaskPart, ...]] = {}
    if mask_pattern and mask_suffix:
        raise DataError("give either a mask suffix or a mask pattern, not both")
    if mask_dir is None:
        images = _index_files(_image_files(image_dir, None, mask_suffix), "", found)
        pairs = {stem: (path, None) for stem, path in images.items()}
    elif mask_pattern:
        mask_dir = existing_folder(mask_dir, "mask")
        pairs, parts = _pair_with_pattern(image_dir, mask_dir, MaskPattern(mask_pattern), found)
    else:
        mask_dir = existing_folder(mask_dir, "mask")
        pairs = _pair_with_masks(image_dir, mask_dir, mask_suffix, found)
    samples: list[Sample] = []
    for stem in sorted(pairs):
        image_path, mask_path = pairs[stem]
        if stem in parts:
            samples.append(Sample(stem, image_path, mask_path, mask_parts=parts[stem]))
            continue
        samples.extend(_expand(stem, image_path, mask_path, nifti_axis, keep_empty_slices,
                               mask_mode, max_label, found))
    samples = _drop_duplicate_stems(samples, found)
    if problems is not None:
        problems.extend(found)
    elif found:
        where = f"{image_dir}" + (f" with masks in {mask_dir}" if mask_dir else "")
        raise problems_error(found, f"cannot pair the images in {where}:")
    return sorted(samples, key=lambda sample: sample.stem)


def number_classes_together(*groups: list[Sample]) -> list[list[Sample]]:
    """The sample lists with their mask-pattern classes numbered over all of them.

    Each folder paired with a ``{class}`` pattern numbers the classes it holds, so a
    val/ folder without one of train/'s classes would shift the labels; here the class
    names of every list, sorted, become labels 1..K in all of them. Lists without
    ``{class}`` parts come back unchanged.
    """
    names = sorted(set().union(*(class_names_of([s.mask_parts for s in group]) for group in groups)))
    if not names:
        return [list(group) for group in groups]
    return [[replace(s, mask_parts=renumber_parts(s.mask_parts, names)) if s.mask_parts else s for s in group]
            for group in groups]


def _pair_with_masks(
    image_dir: Path, mask_dir: Path, mask_suffix: str, found: list[DataProblem]
) -> dict[str, tuple[Path, Path | None]]:
    if image_dir.resolve() == mask_dir.resolve() and not mask_suffix:
        raise DataError(f"images and masks are both in {image_dir}: give a mask_suffix "
                        "(e.g. '_mask') so mask files can be told apart, or use two folders")
    images = _index_files(_image_files(image_dir, mask_dir, mask_suffix), "", found)
    mask_files = image_files_in(mask_dir)
    if image_dir.resolve() == mask_dir.resolve():
        mask_files = [path for path in mask_files if strip_extension(path).endswith(mask_suffix)]
    if not mask_files:
        raise DataError(f"the mask folder {mask_dir} holds no masks (expected files ending in "
                        f"{EXTENSION_LIST}); leave out the mask folder for an unlabelled set")
    masks = _index_files(mask_files, mask_suffix, found)
    pairs: dict[str, tuple[Path, Path | None]] = {}
    for stem, image_path in images.items():
        mask_path = masks.get(stem)
        if mask_path is None:
            found.append(DataProblem(image_path, "no mask for this image",
                                     f"expected {mask_dir / (stem + mask_suffix)} with one of "
                                     f"the extensions {EXTENSION_LIST}"))
            continue
        pairs[stem] = (image_path, mask_path)
    for stem, mask_path in masks.items():
        if stem not in images:
            found.append(DataProblem(mask_path, "a mask without an image",
                                     f"expected an image named {stem}.* in {image_dir}, "
                                     "or remove the mask"))
    return pairs


def _pair_with_pattern(
    image_dir: Path, mask_dir: Path, pattern: MaskPattern, found: list[DataProblem]
) -> tuple[dict[str, tuple[Path, Path | None]], dict[str, tuple[MaskPart, ...]]]:
    """Pairs and mask parts of 2-D images whose masks a pattern names (several files each)."""
    if image_dir.resolve() == mask_dir.resolve():
        raise DataError(f"images and masks are both in {image_dir}: a mask pattern needs a mask folder "
                        "of its own")
    images = _index_files(_image_files(image_dir, None, ""), "", found)
    parts = pattern.index(mask_dir, images.keys(), found)
    if not parts:
        raise DataError(f"no file in {mask_dir} matches the mask pattern {pattern.text!r} for any image "
                        f"of {image_dir} (first image: {next(iter(sorted(images)), '-')!r}); check the "
                        "pattern against a mask file name")
    pairs: dict[str, tuple[Path, Path | None]] = {}
    for stem, image_path in images.items():
        if is_volume_file(image_path):
            found.append(DataProblem(image_path, "a mask pattern pairs 2-D images only",
                                     "export the volume as slices, or give label volumes without a pattern"))
        elif stem not in parts:
            found.append(DataProblem(image_path, "no mask for this image",
                                     f"expected files matching {pattern.text!r} in {mask_dir}"))
        else:
            pairs[stem] = (image_path, parts[stem][0].path)
    return pairs, parts


def _image_files(image_dir: Path, mask_dir: Path | None, mask_suffix: str) -> list[Path]:
    """Image files; when masks share the folder, the files with the suffix are not images."""
    files = image_files_in(image_dir)
    if mask_dir is not None and mask_suffix and image_dir.resolve() == mask_dir.resolve():
        files = [path for path in files if not strip_extension(path).endswith(mask_suffix)]
    if not files:
        raise DataError(f"the image folder {image_dir} holds no images (expected files "
                        f"ending in {EXTENSION_LIST})")
    return files


def _index_files(files: list[Path], suffix: str, found: list[DataProblem]) -> dict[str, Path]:
    """``{pairing stem: path}``; files sharing a stem are reported and left out."""
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        stem = strip_extension(path)
        if suffix:
            if not stem.endswith(suffix):
                found.append(DataProblem(path, f"mask name does not end with {suffix!r}",
                                         f"rename it to <image stem>{suffix}.<extension>"))
                continue
            stem = stem[: -len(suffix)]
        by_stem.setdefault(stem, []).append(path)
    index: dict[str, Path] = {}
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            others = ", ".join(str(path) for path in paths[1:])
            found.append(DataProblem(paths[0], f"shares the stem {stem!r} with {others}",
                                     "keep one of these files"))
            continue
        index[stem] = paths[0]
    return index


def _expand(
    stem: str,
    image_path: Path,
    mask_path: Path | None,
    axis: int,
    keep_empty_slices: bool,
    mask_mode: str,
    max_label: int,
    found: list[DataProblem],
) -> list[Sample]:
    """One sample for a 2-D pair; one per slice for a volume pair."""
    image_is_volume = is_volume_file(image_path)
    if mask_path is not None and is_volume_file(mask_path) != image_is_volume:
        volume, flat = (image_path, mask_path) if image_is_volume else (mask_path, image_path)
        found.append(DataProblem(volume, f"a NIfTI volume paired with the 2-D file {flat}",
                                 "pair volumes with volumes and 2-D files with 2-D files"))
        return []
    if not image_is_volume:
        return [Sample(stem, image_path, mask_path)]
    try:
        indices = _slice_indices(image_path, mask_path, axis, keep_empty_slices,
                                 mask_mode, max_label)
    except UnreadableFileError as error:
        found.append(error.problem)
        return []
    except _ShapeMismatch as mismatch:
        found.append(mismatch.problem)
        return []
    width = max(3, len(str(max(indices, default=0))))
    return [Sample(f"{stem}_z{index:0{width}d}", image_path, mask_path, index, axis)
            for index in indices]


class _ShapeMismatch(Exception):
    def __init__(self, problem: DataProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _slice_indices(
    image_path: Path,
    mask_path: Path | None,
    axis: int,
    keep_empty_slices: bool,
    mask_mode: str,
    max_label: int,
) -> list[int]:
    shape = volume_shape(image_path)
    if mask_path is None:
        return list(range(shape[axis]))
    mask_shape = volume_shape(mask_path)
    if mask_shape != shape:
        raise _ShapeMismatch(DataProblem(
            mask_path, f"mask volume of shape {mask_shape} but its image {image_path} has "
            f"shape {shape}", "resample the mask onto the image grid or fix the pairing"))
    if keep_empty_slices:
        return list(range(shape[axis]))
    mask = read_mask_volume(mask_path, mask_mode, max_label)
    other_axes = tuple(a for a in range(3) if a != axis)
    return [int(index) for index in np.flatnonzero(np.any(mask != 0, axis=other_axes))]


def _drop_duplicate_stems(samples: list[Sample], found: list[DataProblem]) -> list[Sample]:
    """A slice stem can collide with a 2-D file (``a.nii.gz`` slice 0 and ``a_z000.png``)."""
    by_stem: dict[str, list[Sample]] = {}
    for sample in samples:
        by_stem.setdefault(sample.stem, []).append(sample)
    kept = []
    for stem, group in by_stem.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        names = ", ".join(sample.describe() for sample in group)
        found.append(DataProblem(group[0].image_path.parent, f"several samples would be "
                                 f"named {stem!r}: {names}", "rename one of the files"))
    return kept
