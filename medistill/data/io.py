"""Read images and masks from 2-D files; write PNGs atomically.

Contracts (docs/DESIGN.md):

* :func:`read_image` returns ``float32 (H, W, C)``, ``C`` in {1, 3}, raw intensities.
  RGBA drops alpha; 2-channel or more-than-4-channel data is refused.
* :func:`read_mask` returns ``int32 (H, W)`` following the mask reading rule
  (:mod:`medistill.data.mask_rule`, which fixes the two points the design leaves open).
* NIfTI volumes (:mod:`medistill.data.volumes`) are reoriented to canonical RAS+; a
  one-slice NIfTI file also reads here as a 2-D image.

Every failure raises :class:`~medistill.data.file_types.UnreadableFileError` (a
``DataError``) that names the file and says what to do.

The file types, the mask rule and the NIfTI volumes live in their own modules; their
public names are imported here too (``__all__``), so ``from medistill.data.io import
read_volume`` keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from medistill.data.file_types import (
    CONVERT_HINT,
    IMAGE_EXTENSIONS,
    RASTER_EXTENSIONS,
    TIFF_EXTENSIONS,
    VOLUME_EXTENSIONS,
    UnreadableFileError,
    file_extension,
    is_volume_file,
    strip_extension,
)
from medistill.data.mask_rule import DEFAULT_MAX_LABEL, MASK_MODES, binary_threshold, colour_to_grey, mask_from_values
from medistill.data.volumes import (
    VOLUME_CACHE_SIZE,
    clear_volume_cache,
    read_mask_volume,
    read_volume,
    volume_shape,
    volume_slice,
)
from medistill.errors import DataError
from medistill.fileio import atomic_path

__all__ = [
    "DEFAULT_MAX_LABEL", "IMAGE_EXTENSIONS", "MASK_MODES", "RASTER_EXTENSIONS", "TIFF_EXTENSIONS",
    "VOLUME_CACHE_SIZE", "VOLUME_EXTENSIONS", "UnreadableFileError", "binary_threshold",
    "clear_volume_cache", "colour_to_grey", "file_extension", "is_volume_file", "mask_from_values",
    "read_image", "read_mask", "read_mask_values", "read_mask_volume", "read_volume", "strip_extension",
    "volume_shape", "volume_slice", "write_image_png", "write_mask_png",
]


# --------------------------------------------------------------------------- 2-D files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``float32 (H, W, C)`` raw intensities, ``C`` 1 (grey) or 3 (RGB)."""
    array = _read_plane(Path(path), keep_palette_indices=False)
    image = _to_channels_last(array, Path(path))
    if image.shape[-1] == 4:
        image = image[..., :3]
    return image.astype(np.float32)


def read_mask(
    path: str | os.PathLike, mode: str = "auto", max_label: int = DEFAULT_MAX_LABEL
) -> np.ndarray:
    """Read a mask as an ``int32 (H, W)`` label map (design page, mask reading rule)."""
    return mask_from_values(read_mask_values(path), mode, max_label, path)


def read_mask_values(path: str | os.PathLike) -> np.ndarray:
    """The mask file's grey values before the mask rule: ``(H, W)`` in the file's dtype.

    Colour is reduced to grey (rule 1); palette PNGs give their palette indices.
    """
    path = Path(path)
    array = _to_channels_last(_read_plane(path, keep_palette_indices=True), path)
    return colour_to_grey(array)



def _read_plane(path: Path, keep_palette_indices: bool) -> np.ndarray:
    """The raw array of one 2-D file: ``(H, W)`` or ``(H, W, C)`` / ``(C, H, W)``."""
    extension = file_extension(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if extension in RASTER_EXTENSIONS:
        if keep_palette_indices and extension == ".png":
            indices = _palette_indices(path)
            if indices is not None:
                return indices
        return _read_raster(path)
    if extension in TIFF_EXTENSIONS:
        return _read_tiff(path)
    if extension == ".npy":
        return _read_npy(path)
    if extension in VOLUME_EXTENSIONS:
        return _flat_volume(path)
    raise UnreadableFileError(
        path, "unknown file type", f"use one of {', '.join(IMAGE_EXTENSIONS)}")


def _read_raster(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)  # imdecode also handles non-ASCII paths
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise UnreadableFileError(path, "not a readable image file (damaged or mislabelled)",
                                  CONVERT_HINT)
    if array.ndim == 3 and array.shape[2] == 3:
        return array[..., ::-1]  # OpenCV decodes to BGR
    if array.ndim == 3 and array.shape[2] == 4:
        return array[..., [2, 1, 0, 3]]
    return array


def _palette_indices(path: Path) -> np.ndarray | None:
    """The index plane of a palette PNG (label masks are often saved that way), else None."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            if picture.mode != "P":
                return None
            return np.asarray(picture)
    except (OSError, ValueError, SyntaxError):
        return None  # let the ordinary reader produce the error message


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            array, axes = np.asarray(series.asarray()), series.axes
    except Exception as error:  # tifffile raises many types for damaged files
        raise UnreadableFileError(path, f"not a readable TIFF file ({error})",
                                  CONVERT_HINT) from error
    if "S" in axes and "Y" in axes and axes.index("S") < axes.index("Y"):
        array = np.moveaxis(array, axes.index("S"), -1)  # planar: samples stored first
    return array


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # ValueError, EOFError, UnpicklingError…
        raise UnreadableFileError(path, f"not a readable .npy array ({error})",
                                  "save it with numpy.save") from error
    if not isinstance(array, np.ndarray):
        raise UnreadableFileError(path, "not a single array", "save one array per .npy file")
    return array


def _flat_volume(path: Path) -> np.ndarray:
    """A NIfTI file read as a 2-D plane: only volumes with one slice qualify."""
    volume = read_volume(path)
    flat_axes = [axis for axis in range(3) if volume.shape[axis] == 1]
    if flat_axes:
        return volume_slice(volume, 0, axis=flat_axes[-1])
    raise UnreadableFileError(
        path, f"a 3-D volume of shape {volume.shape}, not a 2-D image",
        "list it with pair_folder, which splits volumes into slices")


def _to_channels_last(array: np.ndarray, path: Path) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` / ``(C, H, W)`` → ``(H, W, C)`` with C in {1, 3, 4}."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise UnreadableFileError(path, f"pixel values of type {array.dtype} are not numbers",
                                  "save the image as integers or floats")
    if array.ndim > 3:
        array = _squeeze_extra_axes(array)
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if array.ndim != 3:
        raise UnreadableFileError(
            path, f"an array of shape {array.shape}, not a 2-D image",
            "save one 2-D image per file, or a 3-D NIfTI volume")
    if array.shape[0] in (1, 3, 4) and min(array.shape[1:]) > 4:
        array = np.moveaxis(array, 0, -1)  # channels-first .npy (e.g. from PyTorch)
    channels = array.shape[-1]
    if channels == 2:
        raise UnreadableFileError(
            path, "2 channels (grey + alpha?) where 1 (grey), 3 (RGB) or 4 (RGBA) are expected",
            "save it as a grey or RGB image")
    if channels not in (1, 3, 4):
        raise UnreadableFileError(
            path, f"{channels} channels (shape {array.shape}) where 1 (grey), 3 (RGB) or "
            "4 (RGBA) are expected", "save one 2-D grey or RGB image per file")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UnreadableFileError(path, f"an empty image of shape {array.shape}",
                                  "replace the file")
    return array


def _squeeze_extra_axes(array: np.ndarray) -> np.ndarray:
    axes = tuple(axis for axis in range(array.ndim - 2) if array.shape[axis] == 1)
    return np.squeeze(array, axis=axes) if axes else array


# --------------------------------------------------------------------------- writing


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a label map as an 8-bit grey PNG holding the label values unchanged.

    A binary mask is written as {0, 1} (multiply by 255 first for a viewable file);
    it reads back identical with :func:`read_mask`.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"cannot write {path}: a mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DataError(f"cannot write {path}: mask values must lie in 0..255 for an 8-bit "
                        f"PNG (got {mask.min()}..{mask.max()})")
    return _write_png_atomically(Path(path), mask.astype(np.uint8))


def write_image_png(path: str | os.PathLike, image_uint8: np.ndarray) -> Path:
    """Write a ``uint8`` image, ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB, as a PNG."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8:
        raise DataError(f"cannot write {path}: the image must be uint8, got {image.dtype} "
                        "(scale it to 0..255 and convert it first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]  # OpenCV encodes BGR
    elif image.ndim != 2:
        raise DataError(f"cannot write {path}: expected (H, W), (H, W, 1) or (H, W, 3), "
                        f"got shape {image.shape}")
    return _write_png_atomically(Path(path), image)


def _write_png_atomically(path: Path, array: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise DataError(f"cannot write {path}: PNG encoding failed")
    try:
        with atomic_path(path) as temporary:
            temporary.write_bytes(encoded.tobytes())
    except OSError as error:
        raise DataError(f"cannot write {path}: {error} (check the folder exists and is "
                        "writable)") from error
    return path
