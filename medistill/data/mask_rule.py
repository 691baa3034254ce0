"""The mask reading rule: a mask file's values become an ``int32`` label map.

The rule is the design page's (docs/DESIGN.md, "Mask reading rule"); two points it
leaves open are fixed here:

- the "half the dtype's range" threshold is 127 for ``uint8`` and 32767 for
  ``uint16``; other integer types (signed, 32/64-bit) and rounded float masks have
  no meaningful dtype range, so they use the range of the smallest unsigned type
  that holds their largest value (127 up to 255, 32767 up to 65535);
- float masks outside [0, 1] are rounded to integers and then follow the integer
  rule, so a float ``{0, 255}`` mask is binary and a float ``{0, 1, 2}`` mask a
  label map.

:func:`colour_to_grey` is rule 1 (colour to grey), :func:`mask_from_values` the rest;
both work on arrays of any shape, so 2-D files (:mod:`medistill.data.io`) and whole
NIfTI volumes (:mod:`medistill.data.volumes`) share them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medistill.data.file_types import UnreadableFileError
from medistill.errors import DataError

DEFAULT_MAX_LABEL = 20
MASK_MODES = ("auto", "binary", "labels")
_LUMA_601 = np.array([0.299, 0.587, 0.114])


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
