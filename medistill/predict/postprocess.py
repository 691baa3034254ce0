"""Post-processing of label maps (2-D masks or 3-D label volumes), class by class.

* ``largest_component``: keep only the largest connected component of each foreground
  class (for organs that come in one piece);
* ``min_size``: remove connected components smaller than ``min_size`` pixels (voxels for
  volumes) of each foreground class.

:func:`remove_specks` applies a model's noise floor (a fraction of each 2-D mask's pixels,
see :class:`medistill.export.ModelCard`) slice by slice.

Removed pixels become background (0). Connectivity is face-connected (4-neighbours in
2-D, 6 in 3-D): :func:`components` labels 2-D masks with OpenCV and volumes with
``scipy.ndimage.label`` (imported only for volumes: it costs a cold start ~0.4 s).

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


def components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components of a boolean mask (2-D or 3-D): ``(labels, sizes)``.

    ``labels`` numbers the components 1..n (0 is background); ``sizes[k]`` is the pixel
    count of component ``k`` (``sizes[0]`` is set to 0).
    """
    if binary.ndim == 2:
        import cv2

        _, labelled = cv2.connectedComponents(binary.astype(np.uint8), connectivity=4)
    else:
        from scipy import ndimage

        labelled, _ = ndimage.label(binary)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled, sizes


def clean_labels(labels: np.ndarray, largest_component: bool = False, min_size: int = 0) -> np.ndarray:
    """``labels`` with small or secondary components of every foreground class set to 0."""
    if not largest_component and min_size <= 1:
        return labels
    cleaned = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        labelled, sizes = components(labels == value)
        keep = sizes >= max(min_size, 1)
        if largest_component:
            keep &= np.arange(len(sizes)) == int(np.argmax(sizes))
        cleaned[(labelled > 0) & ~keep[labelled]] = 0
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
    slices = [clean_labels(mask, min_size=min_size) for mask in labels.reshape(-1, height, width)]
    return np.stack(slices).reshape(labels.shape)
