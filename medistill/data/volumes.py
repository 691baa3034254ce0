"""NIfTI volumes: read, cached, reoriented to canonical RAS+, sliced for display.

Volumes are reoriented to the closest canonical (RAS+) orientation, so ``axis=2`` is
always axial, 1 coronal and 0 sagittal whatever the file's affine. :func:`volume_slice`
shows every slice the same way (neurological display): the top row is the anterior
(axial) or superior (coronal, sagittal) side, and columns run along the first remaining
RAS+ axis (patient's left → right for axial and coronal slices, posterior → anterior for
sagittal ones). nibabel is imported only when a volume is read.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from medistill.data.file_types import UnreadableFileError
from medistill.data.mask_rule import DEFAULT_MAX_LABEL, mask_from_values
from medistill.errors import DataError

VOLUME_CACHE_SIZE = 4


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """A 3-D NIfTI volume reoriented to canonical RAS+, values as stored (scaled by the
    header's slope/intercept when it has one). A 2-D file gives a one-slice volume.

    Volumes are cached (LRU of a few files, keyed by path and modification time), so
    reading many slices of one file loads it once; the returned array is read-only.
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError as error:
        raise UnreadableFileError(path, "no such file", "check the path") from error
    return _cached_volume(str(path.resolve()), status.st_mtime_ns, status.st_size)


def read_mask_volume(
    path: str | os.PathLike, mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> np.ndarray:
    """A NIfTI mask volume after the mask rule: ``int32``, canonical RAS+, read-only.

    The rule is decided once for the whole volume (one file, one encoding), so every
    slice of a file is interpreted the same way. Cached like :func:`read_volume`.
    """
    path = Path(path)
    read_volume(path)  # raises a readable error for a missing or damaged file
    status = path.stat()
    return _cached_mask_volume(str(path.resolve()), status.st_mtime_ns, status.st_size,
                               mode, max_label)


def volume_slice(volume: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
    """The 2-D slice ``index`` along ``axis`` of a canonical volume, in display orientation.

    The slice is the remaining two axes transposed with the rows reversed, so its shape
    is ``(size of the second remaining axis, size of the first)``, e.g. ``(Y, X)`` for
    an axial slice, anterior at the top and the patient's right on the right.
    """
    if volume.ndim != 3 or not -3 <= axis < 3:
        raise DataError(f"volume_slice needs a 3-D volume and an axis in 0..2, got "
                        f"shape {volume.shape} and axis {axis}")
    if not 0 <= index < volume.shape[axis]:
        raise DataError(f"slice {index} is outside 0..{volume.shape[axis] - 1} along "
                        f"axis {axis}")
    plane = np.take(volume, index, axis=axis)
    return np.ascontiguousarray(plane.T[::-1])


def volume_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """The shape :func:`read_volume` would return, read from the header only."""
    import nibabel as nib

    image = _load_nifti_header(Path(path))
    shape = _spatial_shape(image.shape, Path(path))
    order = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)
    canonical = [0, 0, 0]
    for axis, target in enumerate(order):
        canonical[target] = shape[axis]
    return canonical[0], canonical[1], canonical[2]


def clear_volume_cache() -> None:
    """Forget cached volumes (tests; or after rewriting files within one mtime tick)."""
    _cached_volume.cache_clear()
    _cached_mask_volume.cache_clear()


@functools.lru_cache(maxsize=VOLUME_CACHE_SIZE)
def _cached_volume(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # part of the cache key only
    import nibabel as nib

    image = _load_nifti_header(Path(path))
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # truncated or damaged data block
        raise UnreadableFileError(path, f"the NIfTI data cannot be read ({error})",
                                  "re-export the volume") from error
    data = data.reshape(_spatial_shape(data.shape, Path(path)))
    orientation = nib.orientations.io_orientation(image.affine)
    data = np.ascontiguousarray(nib.orientations.apply_orientation(data, orientation))
    data.setflags(write=False)
    return data


@functools.lru_cache(maxsize=VOLUME_CACHE_SIZE)
def _cached_mask_volume(path: str, mtime_ns: int, size: int, mode: str,
                        max_label: int) -> np.ndarray:
    values = _cached_volume(path, mtime_ns, size)
    mask = mask_from_values(values, mode, max_label, path)
    mask.setflags(write=False)
    return mask


def _load_nifti_header(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises ImageFileError, OSError, gzip errors…
        raise UnreadableFileError(path, f"not a readable NIfTI file ({error})",
                                  "re-export it as .nii or .nii.gz") from error


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Three spatial axes: pad 2-D with a length-1 axis, drop length-1 axes beyond the
    third, refuse real 4-D data."""
    shape = tuple(int(size) for size in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise UnreadableFileError(
            path, f"a NIfTI array of shape {shape}; only 2-D and 3-D volumes are supported",
            "split 4-D series into one 3-D volume per file")
    return shape
