"""NIfTI volumes: slices in, label (or probability) volumes out on the input's grid.

Slices are taken exactly as the training data took them
(:func:`medistill.data.io.volume_slice` of the RAS+ reoriented volume, so a model trained
on ``medistill sources`` or ``pair_folder`` slices sees the same orientation), and each
predicted slice is put back where it came from. The output volume is then reoriented
from RAS+ back to the file's own axis order, so it has the input's array shape, affine
and header (data type changed to the label type): it opens aligned with the input in
any viewer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medistill.data.io import UnreadableFileError, read_volume, volume_slice
from medistill.fileio import atomic_path


def volume_slices(path: str | os.PathLike, axis: int) -> list[np.ndarray]:
    """Every slice along ``axis`` of the volume, ``float32 (H, W, 1)``, as training saw them."""
    volume = read_volume(path)
    return [volume_slice(volume, index, axis)[..., np.newaxis].astype(np.float32)
            for index in range(volume.shape[axis])]


def stack_slices(planes: list[np.ndarray], axis: int) -> np.ndarray:
    """Invert :func:`volume_slices`: 2-D planes ``(H, W[, K])`` → a RAS+ volume ``(X, Y, Z[, K])``."""
    # volume_slice shows plane.T[::-1]; undo the row reversal, then the transpose.
    canonical = [np.swapaxes(plane[::-1], 0, 1) for plane in planes]
    return np.stack(canonical, axis=axis)


def _to_file_orientation(canonical: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A RAS+ array (``read_volume``'s orientation) back in the file's own axis order."""
    from nibabel.orientations import apply_orientation, io_orientation

    to_canonical = io_orientation(affine)
    back = np.zeros_like(to_canonical)
    for file_axis, (canonical_axis, flip) in enumerate(to_canonical):
        back[int(canonical_axis)] = (file_axis, flip)
    return apply_orientation(canonical, back)


def write_like(path: Path, canonical: np.ndarray, source: Path, dtype: type, labels: bool) -> Path:
    """Write ``canonical`` (RAS+, ``(X, Y, Z[, K])``) to ``path`` on the grid of the NIfTI ``source``.

    The output keeps ``source``'s affine and header (units, codes, description); its data
    type becomes ``dtype`` with no scaling. Label volumes get the NIfTI "label" intent
    and a display range 0..max label. Written atomically.
    """
    import nibabel as nib

    try:
        image = nib.load(str(source))
    except Exception as error:  # nibabel raises several types for a damaged file
        raise UnreadableFileError(source, f"not a readable NIfTI file ({error})",
                                  "re-export it as .nii or .nii.gz") from error
    data = _to_file_orientation(canonical, image.affine)
    spatial = tuple(int(size) for size in image.shape)
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial = spatial[:-1]
    data = data.reshape(spatial + data.shape[3:]).astype(dtype)
    header = image.header.copy()
    header.set_data_dtype(dtype)
    output = type(image)(data, image.affine, header)
    output.header.set_slope_inter(1.0, 0.0)
    if labels:
        output.header.set_intent("label")
        output.header["cal_min"], output.header["cal_max"] = 0, int(data.max(initial=0))
    else:
        output.header.set_intent("none")
        output.header["cal_min"], output.header["cal_max"] = 0.0, 1.0
    with atomic_path(path) as temporary:
        nib.save(output, str(temporary))
    return path
