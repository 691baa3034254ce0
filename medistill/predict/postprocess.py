"""Post-processing of label maps (2-D masks or 3-D label volumes), class by class.

* ``largest_component``: keep only the largest connected component of each foreground
  class (for organs that come in one piece);
* ``min_size``: remove connected components smaller than ``min_size`` pixels (voxels for
  volumes) of each foreground class.

:func:`remove_specks` applies a model's noise floor (a fraction of each 2-D mask's pixels,
see :class:`medistill.export.ModelCard`) slice by slice.

Removed pixels become background (0). Connectivity is face-connected (4-neighbours in
2-D, 6 in 3-D), as ``scipy.ndimage.label`` by default.

>>> import numpy as np
>>> labels = np.array([[1, 1, 0, 1], [1, 0, 0, 0]])
>>> clean_labels(labels, largest_component=True).tolist()
[[1, 1, 0, 0], [1, 0, 0, 0]]
>>> clean_labels(labels, min_size=2).tolist()
[[1, 1, 0, 0], [1, 0, 0, 0]]
>>> remove_specks(labels, 0.2).tolist()    # 0.2 of 8 pixels: components of 1 pixel go
[[1, 1, 0, 0], [1, 0, 0, 0]]
"""

from __future__ import annotations

import numpy as np


def clean_labels(labels: np.ndarray, largest_component: bool = False, min_size: int = 0) -> np.ndarray:
    """``labels`` with small or secondary components of every foreground class set to 0."""
    if not largest_component and min_size <= 1:
        return labels
    from scipy import ndimage  # only when asked: its import costs a cold start ~0.4 s

    cleaned = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep = sizes >= max(min_size, 1)
        if largest_component:
            keep &= np.arange(len(sizes)) == int(np.argmax(sizes))
        cleaned[(components > 0) & ~keep[components]] = 0
    return cleaned


def min_component_pixels(fraction: float, height: int, width: int) -> int:
    """The smallest component kept in an ``height × width`` mask: ``ceil(fraction · pixels)``."""
    return int(np.ceil(fraction * height * width - 1e-9))


def remove_specks(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Components smaller than ``fraction`` of a mask's pixels removed, mask by mask.

    ``labels`` is one mask ``(H, W)`` or a stack ``(..., H, W)`` (each slice on its own).
    """
    if fraction <= 0:
        return labels
    height, width = labels.shape[-2:]
    min_size = min_component_pixels(fraction, height, width)
    cleaned = labels.copy()
    for mask in cleaned.reshape(-1, height, width):  # views: cleaned changes in place
        _drop_small(mask, min_size)
    return cleaned


def _drop_small(mask: np.ndarray, min_size: int) -> None:
    """Set the face-connected components of each class of ``mask`` below ``min_size`` pixels to 0 (OpenCV: no SciPy import)."""
    import cv2

    for value in np.unique(mask):
        if value == 0:
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8),
                                                                       connectivity=4)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_size)
        small = small[small > 0]
        if small.size:
            mask[np.isin(components, small)] = 0
