"""Read images, masks and NIfTI volumes; write PNGs atomically.

Contracts (docs/DESIGN.md):

* :func:`read_image` returns ``float32 (H, W, C)``, ``C`` in {1, 3}, raw intensities.
  RGBA drops alpha; 2-channel or more-than-4-channel data is refused.
* :func:`read_mask` returns ``int32 (H, W)`` following the mask reading rule of the
  design page. Two points the design leaves open are fixed here:

  - the "half the dtype's range" threshold is 127 for ``uint8`` and 32767 for
    ``uint16``; other integer types (signed, 32/64-bit) and rounded float masks have
    no meaningful dtype range, so they use the range of the smallest unsigned type
    that holds their largest value (127 up to 255, 32767 up to 65535);
  - float masks outside [0, 1] are rounded to integers and then follow the integer
    rule, so a float ``{0, 255}`` mask is binary and a float ``{0, 1, 2}`` mask a
    label map.

* NIfTI volumes are reoriented to the closest canonical (RAS+) orientation, so
  ``axis=2`` is always axial, 1 coronal and 0 sagittal whatever the file's affine.
  :func:`volume_slice` shows every slice the same way (neurological display): the
  top row is the anterior (axial) or superior (coronal, sagittal) side, and columns
  run along the first remaining RAS+ axis (patient's left → right for axial and
  coronal slices, posterior → anterior for sagittal ones).

Every failure raises :class:`UnreadableFileError` (a ``DataError``) that names the
file and says what to do.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np

from medistill.errors import DataError, DataProblem
from medistill.fileio import atomic_path

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".nii", ".nii.gz",
)
VOLUME_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
RASTER_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")

DEFAULT_MAX_LABEL = 20
MASK_MODES = ("auto", "binary", "labels")
VOLUME_CACHE_SIZE = 4
_LUMA_601 = np.array([0.299, 0.587, 0.114])
_CONVERT_HINT = "convert it to PNG, TIFF, .npy or NIfTI"


class UnreadableFileError(DataError):
    """A file that cannot be used; ``problem`` holds the path, the reason and the fix."""

    def __init__(self, path: str | os.PathLike, what: str, fix: str = "") -> None:
        self.problem = DataProblem(Path(path), what, fix)
        message = f"cannot read {path}: {what}"
        super().__init__(f"{message} ({fix})" if fix else message)


# --------------------------------------------------------------------------- names


def file_extension(path: str | os.PathLike) -> str:
    """The known extension of ``path`` in lower case (``".nii.gz"`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    for extension in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension) and len(name) > len(extension):
            return extension
    return ""


def strip_extension(path: str | os.PathLike) -> str:
    """The file name without its known extension: ``"a.nii.gz"`` → ``"a"``."""
    name = Path(path).name
    extension = file_extension(name)
    return name[: len(name) - len(extension)] if extension else name


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for NIfTI files (``.nii``, ``.nii.gz``)."""
    return file_extension(path) in VOLUME_EXTENSIONS


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


def colour_to_grey(array: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` → ``(H, W)``: one channel if the colour channels agree, else 601 luma."""
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1:
        return array[..., 0]
    red, green, blue = array[..., 0], array[..., 1], array[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return red
    luma = array.astype(np.float64) @ _LUMA_601
    if np.issubdtype(array.dtype, np.integer):
        return np.rint(luma).astype(array.dtype)
    return luma.astype(array.dtype)


def mask_from_values(
    values: np.ndarray,
    mode: str = "auto",
    max_label: int = DEFAULT_MAX_LABEL,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Apply the mask rule (float / integer, ``auto`` / ``binary`` / ``labels``) elementwise.

    ``values`` may have any shape (a 2-D mask or a whole volume); the result is int32.
    """
    where = Path(path) if path is not None else Path("<array>")
    if mode not in MASK_MODES:
        raise DataError(f"mask mode {mode!r} is not one of {', '.join(MASK_MODES)}")
    if values.dtype == bool:
        return values.astype(np.int32)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            raise UnreadableFileError(where, "the mask contains NaN or infinite values",
                                      "save a mask of finite numbers")
        if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
            return (values > 0.5).astype(np.int32)
        values = np.rint(values).astype(np.int64)
    elif not np.issubdtype(values.dtype, np.integer):
        raise UnreadableFileError(where, f"mask values of type {values.dtype} are not numbers",
                                  "save the mask as integers or floats")
    return _integer_mask(values, mode, max_label, where)


def binary_threshold(values: np.ndarray) -> int:
    """Foreground is ``value > binary_threshold(values)`` for a binarised integer mask."""
    if values.dtype == np.uint8:
        return 127
    if values.dtype == np.uint16:
        return 32767
    largest = int(values.max()) if values.size else 0
    if largest <= 255:
        return 127
    if largest <= 65535:
        return 32767
    return largest // 2


def _integer_mask(values: np.ndarray, mode: str, max_label: int, where: Path) -> np.ndarray:
    if values.size and values.min() < 0:
        raise UnreadableFileError(
            where, f"the mask has negative values (minimum {values.min()})",
            "masks hold 0 for background and positive labels for foreground")
    small_valued = values.size == 0 or values.max() <= max_label
    if mode == "labels" or (mode == "auto" and small_valued):
        if values.size and values.max() > np.iinfo(np.int32).max:
            raise UnreadableFileError(where, "mask labels do not fit in int32",
                                      "renumber the labels from 0")
        return values.astype(np.int32)
    if small_valued or _is_two_valued(values):
        # A label map in binary mode, or a clean {0, v} mask of any bit depth (a 16-bit
        # {0, 255} mask included): every non-zero value is foreground.
        return (values > 0).astype(np.int32)
    return (values > binary_threshold(values)).astype(np.int32)


def _is_two_valued(values: np.ndarray) -> bool:
    """True for a mask holding exactly zero and one other value."""
    if values.size == 0 or values.min() != 0:
        return False
    top = values.max()
    return bool(np.all((values == 0) | (values == top)))


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
                                  _CONVERT_HINT)
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
                                  _CONVERT_HINT) from error
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


# --------------------------------------------------------------------------- NIfTI


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
